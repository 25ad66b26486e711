"""Every nats-py private name the room log uses, behind one seam; and JetStream's raw replies.

nats-py==2.16.0 is pinned in pyproject. `connection_of` and `api_prefix_of` read two private
fields of a `JetStreamContext`; `FastDelivery` wraps the client's private `_process_msg` so
one subscription's deliveries skip nats-py's message objects. Each checks the internals it
needs and fails (or falls back) plainly when they move, and `tests/test_roomlog.py` fails
loudly if the fast path is not taken. `parse_status` reads a JetStream status reply.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

MSG_ID = "Nats-Msg-Id"
"""The header JetStream deduplicates appends by."""

Delivery = tuple[bytes, bytes, bytes, "bytes | dict[str, str] | None"]
"""(subject, reply, payload, headers: raw bytes on the fast path, parsed otherwise)."""


def parse_status(headers: bytes | dict[str, str] | None) -> tuple[str, str, int]:
    """(status code, description, Nats-Pending-Messages or -1) of a JetStream status message."""
    if isinstance(headers, dict):
        left = headers.get("Nats-Pending-Messages", "")
        return (
            headers.get("Status", ""),
            headers.get("Description", ""),
            int(left) if left.isdigit() else -1,
        )
    if not headers:
        return "", "", -1
    lines = headers.decode("utf-8", "replace").split("\r\n")
    first = lines[0].split(" ", 2)  # NATS/1.0 408 Request Timeout
    status = first[1] if len(first) > 1 else ""
    description = first[2].strip() if len(first) > 2 else ""
    pending = -1
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "nats-pending-messages" and value.strip().isdigit():
            pending = int(value.strip())
    return status, description, pending


def connection_of(js: JetStreamContext) -> NATS:
    """The client a JetStream context was made from (nats-py keeps it private)."""
    nc = getattr(js, "_nc", None)
    if not isinstance(nc, NATS):
        raise TypeError("nats-py internals moved: JetStreamContext._nc is not a client")
    return nc


def api_prefix_of(js: JetStreamContext) -> str:
    """The JetStream API prefix (``$JS.API`` unless a domain is set)."""
    prefix = getattr(js, "_prefix", None)
    if not isinstance(prefix, str):
        raise TypeError("nats-py internals moved: JetStreamContext._prefix is not a string")
    return prefix


class FastDelivery:
    """Hand one subscription's raw deliveries straight to a function (nats-py 2.16 internals).

    nats-py turns every delivery into a `Msg` (decoding subject and reply, parsing headers
    with a per-character loop), queues it and awaits a callback in another task: ~20 µs per
    message on a small machine, half of the reader's budget. Its protocol parser calls
    ``client._process_msg(sid, subject, reply, payload, headers)`` for every message; this
    wraps that method on the client instance so the reader's subscription skips all of it
    (raw bytes in, nothing else touched), and every other subscription is served as before.
    Anything unexpected about the internals leaves the client alone: the reader then falls
    back to its ordinary callback, correct but about half as fast. `test_roomlog` checks the
    fast path is taken, so an upgrade that moves the internals fails loudly.
    """

    _routes: weakref.WeakKeyDictionary[NATS, dict[int, RawHandler]] = weakref.WeakKeyDictionary()

    @classmethod
    def route(cls, nc: NATS, sub: Subscription, handler: RawHandler) -> bool:
        """Send `sub`'s deliveries to `handler`; False if nats-py's internals do not fit."""
        sid = getattr(sub, "_id", None)
        original = getattr(nc, "_process_msg", None)
        if not isinstance(sid, int) or not inspect.iscoroutinefunction(original):
            return False
        params = list(inspect.signature(original).parameters)
        if params != ["sid", "subject", "reply", "data", "headers"]:
            return False
        routes = cls._routes.get(nc)
        if routes is None:
            routes = cls._routes[nc] = {}
            cls._wrap(nc, original, routes)
        routes[sid] = handler
        return True

    @classmethod
    def unroute(cls, nc: NATS, sub: Subscription) -> None:
        """Stop routing `sub` (idempotent)."""
        routes = cls._routes.get(nc)
        if routes is not None:
            routes.pop(getattr(sub, "_id", -1), None)

    @staticmethod
    def _wrap(
        nc: NATS, original: Callable[..., Awaitable[None]], routes: dict[int, RawHandler]
    ) -> None:
        stats = nc.stats

        async def process_msg(
            sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            handler = routes.get(sid)
            if handler is None:
                await original(sid, subject, reply, data, headers)
                return
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            handler(subject, reply, data, headers)

        nc._process_msg = process_msg  # type: ignore[method-assign]


RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], None]
