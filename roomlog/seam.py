"""The room log's seam (STYLE rule 4): what the services use of it, as Protocols.

`RoomLogPort` is what the statekeeper, the edge's bus and the benchmarks call on a room
log; `LogReaderPort` is the ordered reader it hands out. `roomlog.log.RoomLog` (JetStream)
and `roomlog.memory.MemoryRoomLog` (in process, for unit tests of the shells) implement
both with the same semantics, pinned by one contract test class:

- one sequence per stream, from 1, in append order; the log and the public events
  stream count separately;
- a message id seen again within `DUPLICATE_WINDOW` stores nothing and answers the
  sequence the first append got (so a retried append is safe);
- every room's events are in its room's partition (`schemas.subjects.partition_of`); a
  reader of some partitions sees only theirs, in sequence order, from its start sequence,
  and keeps following live appends.

`CoreLink` is the core (not JetStream) NATS a shell uses of its connection: publishes,
callback subscriptions and whether the link is up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Protocol

from nats.aio.msg import Msg

from roomlog.reader import LogRecord
from schemas.codec import Message
from schemas.log import LogEvent


class LogReaderPort(Protocol):
    """An ordered reader of the room log from a start sequence (`roomlog.reader.LogReader`).

    Use it as ``async with log.reader(partitions, start_seq) as reader:``; it opens once.
    """

    @property
    def last_seq(self) -> int:
        """The sequence of the last record handed out (start_seq - 1 before any)."""
        ...

    async def next_batch(self, max_wait: float | None = None) -> list[LogRecord]:
        """The next records in order (at least one), or [] once `max_wait` seconds pass."""
        ...

    async def __aenter__(self) -> LogReaderPort: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[LogRecord]: ...


class RoomLogPort(Protocol):
    """Appends to the room log and the public events stream, and readers of the log."""

    async def ensure(self) -> None:
        """Make sure both streams exist (appends fail before). Safe to call often."""
        ...

    async def append(self, event: LogEvent, msg_id: str) -> int:
        """Append one event to its room's log; its sequence (the first one's, for a
        repeated `msg_id`)."""
        ...

    async def append_many(
        self, items: Iterable[tuple[LogEvent, str]], *, window: int = 1000
    ) -> list[int]:
        """Append `(event, msg_id)` pairs in order; their sequences. `window` (at least 1)
        bounds how many are unconfirmed at once."""
        ...

    async def publish_event(self, room_id: str, name: str, message: Message, event_id: str) -> int:
        """Append a public event, deduplicated by `event_id`; its events-stream sequence."""
        ...

    async def publish_events(
        self, events: Iterable[tuple[str, str, Message, str]], *, window: int = 1000
    ) -> list[int]:
        """`publish_event` for many `(room_id, name, message, event_id)`, in order."""
        ...

    async def publish_event_batch(self, events: Iterable[tuple[str, str, Message, str]]) -> int:
        """`publish_events` without each event's sequence (fewer acks); the sequence of the
        last event stored, 0 when none was new."""
        ...

    async def last_seq(self) -> int:
        """The sequence of the last event stored in the log (0 when it is empty)."""
        ...

    def reader(self, partitions: Iterable[int] | None = None, start_seq: int = 1) -> LogReaderPort:
        """A reader of these partitions (None = all) from `start_seq`, not yet open.

        `ValueError` for an empty set of partitions."""
        ...


class Unsubscribable(Protocol):
    """A subscription a shell made: all it does with one is end it."""

    async def unsubscribe(self, limit: int = 0) -> None: ...


class CoreLink(Protocol):
    """The core NATS a service shell uses of its connection (`nats.aio.client.Client`)."""

    @property
    def is_connected(self) -> bool: ...

    async def publish(self, subject: str, payload: bytes = b"") -> None: ...

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> Unsubscribable: ...


__all__ = ["CoreLink", "LogReaderPort", "RoomLogPort", "Unsubscribable"]
