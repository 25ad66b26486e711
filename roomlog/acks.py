"""Single JetStream publishes whose acks come back on one shared inbox subscription.

nats-py's `JetStreamContext.publish` is a request: a fresh token and future per call, the
headers encoded key by key, the ack delivered as a `Msg` through a callback task, parsed
with `json.loads` into a `PubAck` dataclass (~40-50 µs of CPU per append on a small
machine). An edge appends one event per join, so that was a good part of a join's cost.

`PublishAcks` does what `roomlog.appends.AckWindow` does for a batch, for publishes that
each wait on their own: one subscription ``<inbox>.*`` made on first use (and kept, nats-py
re-subscribes it after a reconnect), publish `n` asks for its ack on ``<inbox>.<n>``,
written pre-encoded (`jetstream.publish_all`); acks arrive raw (`FastDelivery`) and wake
the one future waiting on them. What a publish raises is what `JetStreamContext.publish`
raises for the same outcome: `nats.errors.TimeoutError` when no ack came in time,
`NoStreamResponseError` for a 503 (no stream, or none with a leader), the `APIError` the
server answered otherwise.
"""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from roomlog.appends import _ack_seq
from roomlog.jetstream import FastDelivery, parse_status, publish_all

Ack = tuple[bytes, "bytes | dict[str, str] | None"]
"""(payload, headers: raw on the fast path, parsed otherwise) of one ack."""


class PublishAcks:
    """Deduplicated JetStream publishes, each awaiting its own ack (the module docstring)."""

    __slots__ = (
        "_cut",
        "_inbox",
        "_loop",
        "_nc",
        "_numbers",
        "_opening",
        "_sub",
        "_waiting",
        "fast_path",
    )

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._inbox = nc.new_inbox()
        self._cut = len(self._inbox) + 1
        self._numbers = itertools.count()
        self._waiting: dict[int, asyncio.Future[Ack]] = {}
        self._sub: Subscription | None = None
        self._opening: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the subscription (and of the client): each publish makes its future
        and timer there, without `get_running_loop` (a process id check, a system call)."""
        self.fast_path = False
        """Whether acks arrive raw (`FastDelivery`); known once the first publish subscribed."""

    async def _open(self) -> None:
        """Subscribe the inbox (once; callers at the same time share the subscribe)."""
        if self._opening is None or (self._opening.done() and self._opening.exception()):
            self._opening = asyncio.ensure_future(self._subscribe())
        await asyncio.shield(self._opening)

    async def _subscribe(self) -> None:
        self._loop = asyncio.get_running_loop()
        sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        self.fast_path = FastDelivery.route(self._nc, sub, self._on_raw)
        self._sub = sub

    async def close(self) -> None:
        """Drop the subscription (idempotent); publishes still waiting time out."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await FastDelivery.drop(self._nc, sub)

    def _deliver(self, subject: bytes | str, ack: Ack) -> None:
        try:
            n = int(subject[self._cut :])
        except ValueError:
            return
        future = self._waiting.pop(n, None)
        if future is not None and not future.done():
            future.set_result(ack)

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._deliver(subject, (data, headers))

    async def _on_msg(self, msg: Msg) -> None:  # used when the fast path is unavailable
        self._deliver(msg.subject, (msg.data, msg.headers))

    async def publish(self, subject: str, payload: bytes, msg_id: str, timeout: float) -> int:
        """Publish with `msg_id` (``Nats-Msg-Id``) and wait up to `timeout` seconds for the
        ack; the stream sequence (see the module docstring for what it raises)."""
        if self._sub is None:
            await self._open()
        n = next(self._numbers)
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Ack] = loop.create_future()
        self._waiting[n] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await publish_all(self._nc, [(subject, f"{self._inbox}.{n}", payload, msg_id)])
            data, headers = await future
        finally:
            timer.cancel()
            self._waiting.pop(n, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: an expiry raced with a failed write
        if not data:
            status, description, _ = parse_status(headers)
            if status == "503":
                raise nats.js.errors.NoStreamResponseError
            raise nats.js.errors.APIError(code=int(status or 0), description=description)
        return _ack_seq(data)


def _expire(future: asyncio.Future[Ack]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


__all__ = ["PublishAcks"]
