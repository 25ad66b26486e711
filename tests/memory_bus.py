"""In-process core NATS and the edge's bus over it: twins for unit tests of the shells.

`MemoryNats` is core NATS in one process (a `roomlog.seam.CoreLink`): subjects with ``*``
and ``>`` wildcards, queue groups, replies. Each subscription delivers its messages in
order from a task of its own, after the publish returned, as a NATS client does.
`MemoryBus` is the edge's `edge.bus.BusPort` over a `MemoryNats` and a `MemoryRoomLog`,
with `Bus`'s failure rules (tests/test_bus_contract.py runs both through one contract).
Share one `MemoryNats` between a `MemoryBus` and a `Statekeeper` and the two talk as they
would over a nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import cast

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from edge.bus import BusUnavailable, Handler
from roomlog.memory import MemoryRoomLog
from schemas.codec import Message, SchemaError, decode, encode
from schemas.log import LogEvent
from schemas.subjects import STATEKEEPER_API


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS delivers `subject` to a subscription on `pattern`."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


class MemorySubscription:
    """One subscription of a `MemoryNats`: a queue of messages and the task delivering them."""

    def __init__(
        self, hub: MemoryNats, subject: str, queue: str, cb: Callable[[Msg], Awaitable[None]]
    ) -> None:
        self.hub = hub
        self.subject = subject
        self.queue = queue
        self._cb = cb
        self._pending: asyncio.Queue[Msg] = asyncio.Queue()
        self._task = asyncio.create_task(self._deliver())

    def put(self, msg: Msg) -> None:
        self._pending.put_nowait(msg)

    async def _deliver(self) -> None:
        while True:
            msg = await self._pending.get()
            try:
                await self._cb(msg)
            except Exception as exc:  # nats-py logs a failing callback and goes on
                self.hub.callback_errors.append(exc)
            finally:
                self._pending.task_done()

    async def handled(self) -> None:
        """Wait until every message queued so far went through the callback."""
        await self._pending.join()

    async def unsubscribe(self, limit: int = 0) -> None:
        """Stop delivering (what is queued is dropped). Idempotent."""
        self.hub.remove(self)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class MemoryNats:
    """Core NATS in one process. While `cut`, publishes fail, as nats-py's do while
    reconnecting with no buffer (the edge's link); with `reconnect_buffer` they are held
    and go out when `restore`d instead (the statekeeper's link)."""

    def __init__(self, *, reconnect_buffer: bool = False) -> None:
        self.connected = True
        self.reconnect_buffer = reconnect_buffer
        self._held: list[tuple[str, bytes, str]] = []
        self.callback_errors: list[Exception] = []
        """What subscription callbacks raised (a test may assert it stays empty)."""
        self._subs: list[MemorySubscription] = []
        self._inboxes = itertools.count(1)
        self._turns = itertools.count()

    @property
    def is_connected(self) -> bool:
        return self.connected

    def cut(self) -> None:
        """The link goes down."""
        self.connected = False

    async def restore(self) -> None:
        """The link is back: what a reconnect buffer held goes out, in order."""
        self.connected = True
        held, self._held = self._held, []
        for subject, payload, reply in held:
            await self.publish(subject, payload, reply)

    async def handled(self) -> None:
        """Wait until every subscription handled what was published so far."""
        for sub in list(self._subs):
            await sub.handled()

    def new_inbox(self) -> str:
        return f"_INBOX.memory.{next(self._inboxes)}"

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        """Hand the message to every matching subscription (one per queue group)."""
        if not self.connected:
            if not self.reconnect_buffer:
                raise ConnectionError("memory NATS is disconnected")
            self._held.append((subject, payload, reply))
            return
        msg = Msg(cast(NATS, self), subject=subject, reply=reply, data=payload)
        groups: dict[str, list[MemorySubscription]] = {}
        for sub in self._subs:
            if matches(sub.subject, subject):
                if not sub.queue:
                    sub.put(msg)
                else:
                    groups.setdefault(sub.queue, []).append(sub)
        for members in groups.values():  # one member of each group, in turn
            members[next(self._turns) % len(members)].put(msg)

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> MemorySubscription:
        """Deliver messages on `subject` to `cb`, in order."""
        if cb is None:
            raise ValueError("the memory twin delivers to callbacks only")
        if not self.connected:
            raise ConnectionError("memory NATS is disconnected")
        sub = MemorySubscription(self, subject, queue, cb)
        self._subs.append(sub)
        return sub

    async def close(self) -> None:
        """End every subscription (their delivery tasks stop)."""
        for sub in list(self._subs):
            await sub.unsubscribe()

    def remove(self, sub: MemorySubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    async def request(self, subject: str, payload: bytes, timeout: float) -> Msg:
        """Publish with a fresh inbox as the reply subject; the first reply."""
        replies: asyncio.Queue[Msg] = asyncio.Queue()

        async def take(msg: Msg) -> None:
            replies.put_nowait(msg)

        inbox = await self.subscribe(self.new_inbox(), cb=take)
        try:
            if not any(matches(s.subject, subject) for s in self._subs):
                raise ConnectionRefusedError(f"no responders on {subject}")
            await self.publish(subject, payload, reply=inbox.subject)
            return await asyncio.wait_for(replies.get(), timeout)
        finally:
            await inbox.unsubscribe()


class MemoryBus:
    """The edge's `BusPort` over a `MemoryNats` and a `MemoryRoomLog` (ensured here)."""

    def __init__(
        self, nats: MemoryNats, room_log: MemoryRoomLog, request_timeout: float = 2.0
    ) -> None:
        self.nats = nats
        self.room_log = room_log
        self.request_timeout = request_timeout
        self.refused_appends = 0
        """Appends refused at once because the link was down (never sent)."""
        self.closed = False

    @classmethod
    async def connect(
        cls, nats: MemoryNats, room_log: MemoryRoomLog, request_timeout: float = 2.0
    ) -> MemoryBus:
        """A bus on `nats`, with the log's streams made sure of (as `Bus.connect` does)."""
        await room_log.ensure()
        return cls(nats, room_log, request_timeout)

    @property
    def connected(self) -> bool:
        return self.nats.connected and not self.closed

    async def close(self) -> None:
        self.closed = True

    async def jetstream_ok(self, timeout: float) -> str | None:
        return None if self.connected else "JetStream does not answer: disconnected"

    async def subscribe(self, subject: str, handler: Handler) -> MemorySubscription:
        try:
            return await self.nats.subscribe(subject, cb=handler)
        except ConnectionError as exc:
            raise BusUnavailable(f"NATS subscribe failed: {type(exc).__name__}") from None

    async def flush(self) -> None:
        if not self.connected:
            raise BusUnavailable("NATS flush failed: disconnected")

    async def publish(self, subject: str, data: bytes) -> None:
        try:
            await self.nats.publish(subject, data)
        except ConnectionError as exc:
            raise BusUnavailable(f"NATS publish failed: {type(exc).__name__}") from None

    async def append(self, event: LogEvent, msg_id: str) -> int:
        if not self.connected:
            self.refused_appends += 1
            raise BusUnavailable("NATS is disconnected: the action was not sent")
        try:
            return await self.room_log.append(event, msg_id)
        except Exception as exc:
            raise BusUnavailable(f"room log append failed: {type(exc).__name__}") from None

    async def request(
        self, message: Message, *, subject: str = STATEKEEPER_API, timeout: float | None = None
    ) -> tuple[Message, bytes]:
        try:
            reply = await self.nats.request(
                subject, encode(message), timeout or self.request_timeout
            )
        except Exception as exc:
            raise BusUnavailable(f"no answer on {subject}: {type(exc).__name__}") from None
        return self._decoded(reply.data, f"unreadable answer on {subject}")

    async def append_and_wait(
        self, make_event: Callable[[str], LogEvent], msg_id: str, timeout: float | None = None
    ) -> tuple[Message, bytes]:
        replies: asyncio.Queue[Msg] = asyncio.Queue()

        async def take(msg: Msg) -> None:
            replies.put_nowait(msg)

        inbox = await self.subscribe(self.nats.new_inbox(), take)
        try:
            await self.append(make_event(inbox.subject), msg_id)
            try:
                msg = await asyncio.wait_for(replies.get(), timeout or self.request_timeout)
            except TimeoutError:
                raise BusUnavailable("no outcome from the statekeeper: TimeoutError") from None
            return self._decoded(msg.data, "unreadable outcome")
        finally:
            await inbox.unsubscribe()

    @staticmethod
    def _decoded(data: bytes, what: str) -> tuple[Message, bytes]:
        try:
            return decode(data), data
        except SchemaError as exc:
            raise BusUnavailable(f"{what}: {exc}") from None


__all__ = ["MemoryBus", "MemoryNats", "MemorySubscription", "matches"]
