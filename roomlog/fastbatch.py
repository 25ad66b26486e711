"""JetStream fast-batch publishes: many deduplicated publishes, an ack per hundreds of them.

nats-server 2.14 added "fast ingest" batches (ADR-50): every message of a batch is an
ordinary publish, stored as if it came alone (same subject, payload and ``Nats-Msg-Id``; a
message whose id is within the duplicate window is skipped, as a single publish would be),
but its reply subject names the batch,
``<inbox>.<batch id>.<flow>.fail.<n>.<op>.$FI`` (op 0 starts it, 1 appends, 2 stores the
last message and commits), and the stream answers once every `flow` messages (a flow ack,
``{"type": "ack", "seq": n, "msgs": flow}``) and once at the commit (a pub ack with the last
stored sequence and the batch's count), instead of once per message. Gap mode ``fail``:
a message lost on the way ends the batch there, so what is stored is a prefix, in order.

The stream must allow it (``allow_batched``); a stream or server that does not is told
apart by its answer to the first message (`BatchUnsupported`), and the caller publishes
the ordinary way instead. Atomic batches (``allow_atomic``) are not used: an atomic batch
holding one id already stored is refused whole (error 10201), so a statekeeper republishing
after a restart would fail every batch it repeats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import secrets
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from roomlog.jetstream import FastDelivery, Publish, parse_status, publish_all

__all__ = ["BatchUnsupported", "FastBatcher"]

FLOW = 500
"""Messages per flow ack asked for (the server may ask for fewer; 500 is its own maximum)."""
OUTSTANDING = 2
"""Flow acks' worth of messages in flight before waiting for the oldest (ADR-50: 2)."""

_DISABLED = 10205  # "batch publish is disabled": the stream lacks allow_batched
_INVALID_PATTERN = 10206  # a server that parses the reply subject differently
_UNKNOWN_BATCH = 10208  # the batch is gone (a server restart, the 10 s idle timeout)
_TOO_MANY_INFLIGHT = 10211  # the server's batch limits: publish the ordinary way


class BatchUnsupported(Exception):
    """The stream does not take fast batches now; `lasting` when it never will (the
    feature is off or unknown), not when its batch limits are only full. Messages already
    stored stay stored: publishing them again with their ids stores nothing twice."""

    def __init__(self, reason: str, *, lasting: bool) -> None:
        super().__init__(reason)
        self.lasting = lasting


class _Reply(msgspec.Struct):
    """The fields of a flow ack, gap or error message, or a pub ack, read here."""

    type: str = ""
    seq: int = 0
    msgs: int = 0
    stream: str = ""
    batch: str = ""
    duplicate: bool = False
    error: dict[str, Any] | None = None


_read_reply = msgspec.json.Decoder(_Reply).decode


class FastBatcher:
    """Publishes batches on `nc` through one reply inbox (``async with``, then `publish`).

    One batch at a time: `publish` is not reentrant.
    """

    def __init__(self, nc: NATS, ack_timeout: float, *, flow: int = FLOW) -> None:
        if not 1 <= flow <= 65535:
            raise ValueError("flow must be between 1 and 65535")
        self._nc = nc
        self._ack_timeout = ack_timeout
        self._flow = flow
        self._inbox = nc.new_inbox()
        self._prefix = secrets.token_hex(6)
        self._numbers = itertools.count(1)
        self._replies: collections.deque[tuple[bytes, bytes | dict[str, str] | None]] = (
            collections.deque()
        )
        self._current = b""
        """The reply-subject prefix of the batch in progress (late answers of others are
        dropped)."""
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None

    async def __aenter__(self) -> FastBatcher:
        self._sub = await self._nc.subscribe(f"{self._inbox}.>", cb=self._on_msg)
        FastDelivery.route(self._nc, self._sub, self._on_raw)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await FastDelivery.drop(self._nc, sub)

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if subject.startswith(self._current):
            self._replies.append((data, headers))
            self._arrived.set()

    async def _on_msg(self, msg: Msg) -> None:  # used when the fast path is unavailable
        if msg.subject.encode().startswith(self._current):
            self._replies.append((msg.data, msg.headers))
            self._arrived.set()

    async def publish(self, messages: Sequence[tuple[str, bytes, str]]) -> int:
        """Publish `(subject, payload, msg_id)` as one batch, in order; the stream sequence
        of the last message stored (0 when every one was a duplicate).

        Raises `BatchUnsupported` (publish the ordinary way), `nats.errors.TimeoutError`
        when an answer is late or the batch was lost (transient: publish the whole batch
        again, the ids dedupe it), or the `APIError` the stream answered for a message it
        refuses (those before it are stored, none after it).
        """
        if not messages:
            return 0
        deadline = time.monotonic() + self._ack_timeout
        base = f"{self._inbox}.{self._prefix}{next(self._numbers)}.{self._flow}.fail"
        self._current = f"{base}.".encode()
        self._replies.clear()
        last = len(messages)

        def frame(n: int) -> Publish:
            subject, payload, msg_id = messages[n - 1]
            op = 2 if n == last else (0 if n == 1 else 1)
            return (subject, f"{base}.{n}.{op}.$FI", payload, msg_id)

        # The first message alone: its answer says whether the stream takes the batch
        # (ADR-50: a client waits for it before sending more).
        await publish_all(self._nc, [frame(1)])
        first = await self._next_reply(deadline)
        if last == 1:
            return _committed(first, alone=True)
        if first.type != "ack":
            _check_started(first)
        acked, per_ack, sent = first.seq, max(1, first.msgs), 1
        while True:
            limit = min(last, acked + per_ack * OUTSTANDING)
            if limit > sent:
                await publish_all(self._nc, [frame(n) for n in range(sent + 1, limit + 1)])
                sent = limit
                deadline = time.monotonic() + self._ack_timeout
            reply = await self._next_reply(deadline)
            if reply.type == "ack":
                acked, per_ack = max(acked, reply.seq), max(1, reply.msgs)
                deadline = time.monotonic() + self._ack_timeout
                continue
            if reply.type == "gap":  # a message was lost: the server ends the batch
                raise nats.errors.TimeoutError
            if reply.type == "err":
                raise _api_error(reply.error or {})
            if sent < last and reply.error is None:
                raise nats.js.errors.APIError(description="fast batch committed early")
            return _committed(reply, alone=False)

    async def _next_reply(self, deadline: float) -> _Reply:
        while not self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise nats.errors.TimeoutError
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        data, headers = self._replies.popleft()
        if not data:  # a status: 503 when the stream is gone or has no leader
            status, description, _ = parse_status(headers)
            if status == "503":
                raise nats.js.errors.NoStreamResponseError
            raise nats.js.errors.APIError(code=int(status or 0), description=description)
        try:
            return _read_reply(data)
        except msgspec.DecodeError as exc:
            raise nats.js.errors.APIError(description=f"unreadable batch reply: {exc}") from None


def _check_started(first: _Reply) -> None:
    """The first answer of a batch of several was not a flow ack: say why."""
    if first.error is None:  # a pub ack: a server that stored it as a single publish
        raise BatchUnsupported("the server does not know fast batches", lasting=True)
    code = first.error.get("err_code")
    if code in (_DISABLED, _INVALID_PATTERN):
        raise BatchUnsupported(str(first.error.get("description", "")), lasting=True)
    if code == _TOO_MANY_INFLIGHT:
        raise BatchUnsupported(str(first.error.get("description", "")), lasting=False)
    raise _api_error(first.error)


def _committed(reply: _Reply, *, alone: bool) -> int:
    """The sequence a batch's pub ack confirms; raises what it refuses."""
    if reply.type:
        raise nats.js.errors.APIError(description=f"unexpected batch reply {reply.type!r}")
    if reply.error is not None:
        code = reply.error.get("err_code")
        if alone and code in (_DISABLED, _INVALID_PATTERN, _TOO_MANY_INFLIGHT):
            raise BatchUnsupported(
                str(reply.error.get("description", "")), lasting=code != _TOO_MANY_INFLIGHT
            )
        raise _api_error(reply.error)
    if not reply.batch:
        raise BatchUnsupported("the server does not know fast batches", lasting=True)
    return 0 if reply.duplicate else reply.seq  # a batch of one, already stored


def _api_error(error: dict[str, Any]) -> Exception:
    """The error a batch reply carries, as nats-py raises it; a lost batch is transient."""
    if error.get("err_code") == _UNKNOWN_BATCH:
        return nats.errors.TimeoutError()
    refused: Exception = nats.js.errors.APIError.from_error(error)
    return refused
