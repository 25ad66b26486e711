"""Every nats-py private name the room log uses, behind one seam; and JetStream's raw replies.

nats-py==2.16.0 is pinned in pyproject. `connection_of` and `api_prefix_of` read two private
fields of a `JetStreamContext`; `FastDelivery` wraps the client's private `_process_msg` so
one subscription's deliveries skip nats-py's message objects; `publish_all` hands many
publishes to the client's private `_send_command` as one write. Each checks the internals it
needs and fails (or falls back) plainly when they move, and `tests/test_roomlog.py` fails
loudly if a fast path is not taken. `parse_status` reads a JetStream status reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import types
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import nats.errors
from nats.aio.client import DEFAULT_BUFFER_SIZE
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.protocol.parser import AWAITING_CONTROL_LINE as _AWAITING_CONTROL_LINE
from nats.protocol.parser import AWAITING_MSG_PAYLOAD as _AWAITING_MSG_PAYLOAD
from nats.protocol.parser import Parser

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
        if not isinstance(sid, int):
            return False
        routes = cls._routes.get(nc)
        if routes is None:  # checked once per connection (a flush routes a batch's acks)
            original = getattr(nc, "_process_msg", None)
            if not inspect.iscoroutinefunction(original):
                return False
            params = list(inspect.signature(original).parameters)
            if params != ["sid", "subject", "reply", "data", "headers"]:
                return False
            routes = cls._routes[nc] = {}
            cls._wrap(nc, original, routes)
            install_fast_parse(nc)
        routes[sid] = handler
        return True

    @classmethod
    def unroute(cls, nc: NATS, sub: Subscription) -> None:
        """Stop routing `sub` (idempotent)."""
        routes = cls._routes.get(nc)
        if routes is not None:
            routes.pop(getattr(sub, "_id", -1), None)

    @classmethod
    async def drop(cls, nc: NATS, sub: Subscription) -> None:
        """Stop routing `sub` and unsubscribe it, unless the connection is closed already
        (a NATS error while unsubscribing is ignored: the subscription goes with the link)."""
        cls.unroute(nc, sub)
        if not nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

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


def install_fast_parse(nc: object) -> bool:
    """Read `nc`'s ``MSG`` and ``HMSG`` lines with `_fast_parse` (nats-py 2.16 internals).

    nats-py's protocol parser tries a regex per protocol line (``MSG`` first, so every
    ``HMSG`` costs two) and deletes each message from the front of its read buffer, moving
    the rest of the buffer every time: ~2.5 µs per JetStream delivery here, a tenth of the
    statekeeper's CPU per event in the ingest benchmark. `_fast_parse` reads those two lines
    by splitting them and cuts the buffer once per read; every other line, and anything it
    does not recognise exactly, goes to nats-py's own `parse` with the same buffer and state.
    It replaces the parser instance's `parse` (what the client's read loop calls), so a read
    in progress ends as it began. False, and the client left alone, when the parser is not
    nats-py's as expected; `test_roomlog` checks it is installed, and that both parse a
    mixed stream cut anywhere alike.
    """
    parser = getattr(nc, "_ps", None)
    if type(parser) is not Parser or (_AWAITING_CONTROL_LINE, _AWAITING_MSG_PAYLOAD) != (1, 2):
        return False
    state = vars(parser)
    if not (
        isinstance(state.get("buf"), bytearray)
        and isinstance(state.get("msg_arg"), dict)
        and {"state", "needed", "header_needed", "nc"} <= state.keys()
        and "parse" not in state
        and inspect.iscoroutinefunction(Parser.parse)
    ):
        return False
    parser.parse = types.MethodType(_fast_parse, parser)  # type: ignore[method-assign]
    return True


def fast_parse_installed(nc: object) -> bool:
    """Whether `install_fast_parse` took on `nc`."""
    parser = getattr(nc, "_ps", None)
    method = vars(parser).get("parse") if parser is not None else None
    return getattr(method, "__func__", None) is _fast_parse


async def _fast_parse(self: Parser, data: bytes = b"") -> None:
    """`Parser.parse`, with ``MSG`` and ``HMSG`` read without regexes (`install_fast_parse`).

    It reads from an immutable copy of the buffer (one copy per read, then one per slice,
    where a bytearray's slice costs two) and consumes what it read in one cut at the end or
    when handing over: a line it does not read exactly as the server writes it (one space
    after the op, the sizes in digits) goes, with the rest of the buffer, to nats-py's
    `parse`, which reads or refuses it.
    """
    buf = self.buf
    buf.extend(data)
    if self.state == _AWAITING_MSG_PAYLOAD and len(buf) < self.needed + 2:
        return  # a large payload arriving: no copy per read
    view = bytes(buf)
    nc = self.nc  # its `_process_msg` looked up per message, as nats-py does (`FastDelivery`)
    size = len(view)
    pos = 0
    try:
        while pos < size:
            if self.state == _AWAITING_MSG_PAYLOAD:  # a line read earlier, its payload now
                needed = self.needed
                if size - pos < needed + 2:
                    return
                arg = self.msg_arg
                split = self.header_needed
                self.header_needed = 0
                self.state = _AWAITING_CONTROL_LINE
                headers = view[pos : pos + split] if split > 0 else None
                payload = view[pos + max(split, 0) : pos + needed]
                pos += needed + 2
                await nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, headers)
                if self.buf is not buf:  # reset meanwhile (a reconnect): nothing more here
                    return
                continue
            end = view.find(b"\r\n", pos)
            if end < 0:
                return  # the rest of the line is still on its way (nats-py waits too)
            line = view[pos:end]
            args = line.split()
            count = len(args)
            if count in (5, 6) and line.startswith(b"HMSG ") and line[-1:].isdigit():
                header_size, total = args[-2], args[-1]
                if not (args[2].isdigit() and header_size.isdigit() and total.isdigit()):
                    break
                split, needed = int(header_size), int(total)
                reply = args[3] if count == 6 else b""
            elif count in (4, 5) and line.startswith(b"MSG ") and line[-1:].isdigit():
                if not args[2].isdigit():
                    break
                split, needed = 0, int(args[-1])
                reply = args[3] if count == 5 else b""
            else:
                break
            subject, sid = args[1], int(args[2])
            body = end + 2
            if size - body < needed + 2:  # its payload is still on its way
                self.msg_arg["subject"] = subject
                self.msg_arg["sid"] = sid
                self.msg_arg["reply"] = reply
                self.needed = needed
                self.header_needed = split
                self.state = _AWAITING_MSG_PAYLOAD
                pos = body
                return
            headers = view[body : body + split] if split > 0 else None
            payload = view[body + split : body + needed]
            pos = body + needed + 2
            await nc._process_msg(sid, subject, reply, payload, headers)
            if self.buf is not buf:
                return
        else:
            return
        del buf[:pos]  # hand the rest over, from the line not read here
        pos = 0
        await Parser.parse(self)
    finally:
        if pos:
            del buf[:pos]


Publish = tuple[str, str, bytes, "str | None"]
"""(subject, reply or "", payload, Nats-Msg-Id or None): one publish for `publish_all`."""


def _plain(text: str) -> bool:
    """A subject, reply or header value the fast path writes as is: not empty, no whitespace
    (nats-py refuses whitespace in subjects and strips CR/LF out of header values: those go
    through `publish`). Every whitespace character but the space is unprintable, so this
    says yes to a subset of what ``[^\\s]+`` matches, for half its cost: an unprintable
    character that is not whitespace only takes the slower, equally correct way."""
    return text.isprintable() and " " not in text and text != ""


class _Publisher(Protocol):
    async def publish(self, subject: str, payload: bytes = b"") -> None: ...


def raw_publishing(nc: object) -> bool:
    """True when `publish_all` can write to `nc` directly (a nats-py 2.16 client)."""
    return (
        isinstance(nc, NATS)
        and inspect.iscoroutinefunction(getattr(nc, "_send_command", None))
        and inspect.iscoroutinefunction(getattr(nc, "_flush_pending", None))
        and hasattr(nc, "_flush_queue")
        and isinstance(getattr(nc, "_max_payload", None), int)
    )


async def publish_all(nc: _Publisher, messages: Sequence[Publish]) -> None:
    """Publish `messages` in order, as `nc.publish` would one by one, in one socket write.

    nats-py's `publish` costs ~10 µs per message (subject checks, a header regex per key,
    one protocol line and one flusher kick per call). On a nats-py client (`raw_publishing`)
    this builds the ``PUB``/``HPUB`` frames itself and queues them with one private
    `_send_command`; anything the fast path would not write as is (whitespace in a subject,
    an oversized payload, a disconnected client) first sends what is queued, then goes
    through `publish`, which raises or cleans it up exactly as before. Any other link (the
    in-memory twin) is published to one message at a time.
    """
    if not raw_publishing(nc):
        for subject, reply, payload, msg_id in messages:
            if reply or msg_id is not None:
                client: Any = nc
                headers = None if msg_id is None else {MSG_ID: msg_id}
                await client.publish(subject, payload, reply=reply, headers=headers)
            else:
                await nc.publish(subject, payload)
        return
    client = nc
    assert isinstance(client, NATS)
    plain = _plain
    max_payload = client._max_payload
    connected = client.is_connected  # only `publish` below awaits: checked again after it
    frames: list[bytes] = []
    append = frames.append
    size = 0
    count = 0
    for subject, reply, payload, msg_id in messages:
        if (
            connected
            and len(payload) <= max_payload
            and plain(subject)
            and (not reply or plain(reply))
            and (msg_id is None or plain(msg_id))
        ):
            if msg_id is None:
                append(f"PUB {subject} {reply} {len(payload)}\r\n".encode())
            else:
                header = f"NATS/1.0\r\n{MSG_ID}: {msg_id}\r\n\r\n".encode()
                length = len(header)
                append(
                    f"HPUB {subject} {reply} {length} {length + len(payload)}\r\n".encode() + header
                )
            append(payload)
            append(b"\r\n")
            size += len(payload)
            count += 1
            continue
        await _send_frames(client, frames, count, size)
        frames, size, count = [], 0, 0
        append = frames.append
        headers = None if msg_id is None else {MSG_ID: msg_id}
        await client.publish(subject, payload, reply=reply, headers=headers)
        connected = client.is_connected
    await _send_frames(client, frames, count, size)


async def _send_frames(nc: NATS, frames: list[bytes], count: int, size: int) -> None:
    """Queue pre-built frames as `Client._send_publish` queues one (the same checks first)."""
    if not count:
        return
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    nc.stats["out_msgs"] += count
    nc.stats["out_bytes"] += size
    await nc._send_command(b"".join(frames))
    flush_queue = nc._flush_queue
    if flush_queue is not None and flush_queue.empty():
        await nc._flush_pending()


def pace_reads(nc: object, gap_s: float) -> bool:
    """After a read that emptied `nc`'s socket, leave the socket unread for `gap_s`.

    A busy statekeeper is woken by each delivery the server writes: at 2,000 joins a
    second it woke ~780 times a second (~2.6 joins a wake-up), and a wake-up (the poll, the
    transport's read, nats-py's read loop, the log reader's wait, the fold loop) cost about
    as much as folding the joins it brought. Pausing the transport's reading after a short
    read lets the next deliveries gather in the socket, so one read, parse and fold takes
    them all; a read that filled nats-py's buffer (a replay, a backlog) is not paced. What
    the connection receives waits at most `gap_s` longer. It wraps the parser's `parse`
    (what the read loop calls; `install_fast_parse`'s, when installed) and finds the
    transport at each read, so a reconnect is paced too. False, and `nc` left alone, when
    it is not a nats-py client as expected (the in-memory twin) or `gap_s` is 0.
    """
    if gap_s <= 0 or not isinstance(nc, NATS):
        return False
    if nc in _paced:
        return True
    install_fast_parse(nc)  # first: it leaves alone a parser whose `parse` was replaced
    parser: Any = getattr(nc, "_ps", None)
    parse = getattr(parser, "parse", None)
    if not inspect.iscoroutinefunction(parse):
        return False
    full = DEFAULT_BUFFER_SIZE
    loop = asyncio.get_running_loop()

    def resume(transport: asyncio.ReadTransport) -> None:
        if not transport.is_closing():
            transport.resume_reading()

    async def paced(data: bytes = b"") -> None:
        await parse(data)
        if len(data) >= full:
            return
        reader = getattr(getattr(nc, "_transport", None), "_io_reader", None)
        transport = getattr(reader, "_transport", None)
        if (
            isinstance(transport, asyncio.ReadTransport)
            and transport.is_reading()
            and not transport.is_closing()
        ):
            transport.pause_reading()
            loop.call_later(gap_s, resume, transport)

    parser.parse = paced
    _paced.add(nc)
    return True


_paced: weakref.WeakSet[NATS] = weakref.WeakSet()
"""The clients `pace_reads` paced (once each)."""
