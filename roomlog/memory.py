"""The in-process room log: the twin of `RoomLog` for unit tests of the shells.

`MemoryRoomLog` keeps both streams in lists and hands out readers that follow them, with
the semantics `roomlog.seam` describes (sequences, message-id dedupe, partitions). It is
deterministic: the clock that stamps `stored_at` and ages message ids is passed in. Like
JetStream it stores each event's encoded bytes and readers decode them, so what a reader
hands out is equal to, never the same object as, what was appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType

import nats.js.errors

from roomlog.log import DUPLICATE_WINDOW
from roomlog.reader import LogRecord
from schemas.clock import now_ms
from schemas.codec import Message, decode, encode
from schemas.log import LogEvent
from schemas.subjects import public_event, room_log_partitioned


@dataclasses.dataclass(slots=True)
class _Stream:
    """One stream: (subject, bytes, stored_at) by sequence - 1, and the message ids seen."""

    entries: list[tuple[str, bytes, int]] = dataclasses.field(default_factory=list)
    ids: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    """msg id -> (sequence, stored_at)."""

    def store(self, subject: str, data: bytes, msg_id: str, now: int) -> int:
        seen = self.ids.get(msg_id)
        if seen is not None and now - seen[1] < DUPLICATE_WINDOW * 1000:
            return seen[0]
        self.entries.append((subject, data, now))
        seq = len(self.entries)
        self.ids[msg_id] = (seq, now)
        return seq


class MemoryRoomLog:
    """A `RoomLogPort` in memory: the room log and the public events stream as lists.

    `clock` (milliseconds) stamps each stored event and ages message ids out of the
    duplicate window. `events` is the public events stream, for tests to look at.
    """

    def __init__(self, partitions: int = 1, *, clock: Callable[[], int] = now_ms) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.partitions = partitions
        self.clock = clock
        self._log: _Stream | None = None
        self._events: _Stream | None = None
        self._appended = asyncio.Event()

    @property
    def events(self) -> list[tuple[str, Message]]:
        """The public events stored, in order: (subject, message)."""
        stream = self._events
        return [(subject, decode(data)) for subject, data, _ in stream.entries] if stream else []

    def entries(self) -> list[tuple[str, bytes, int]]:
        """The log as stored: (subject, bytes, stored_at) by sequence - 1; a reader's view.

        `NoStreamResponseError` before `ensure`, as JetStream answers."""
        return self._stream(self._log).entries

    async def ensure(self) -> None:
        """Create both streams (once; later calls change nothing)."""
        if self._log is None:
            self._log, self._events = _Stream(), _Stream()

    def _stream(self, stream: _Stream | None) -> _Stream:
        if stream is None:  # what JetStream answers when no stream takes the subject
            raise nats.js.errors.NoStreamResponseError
        return stream

    async def append(self, event: LogEvent, msg_id: str) -> int:
        """Append one event; its sequence (the first one's for a repeated `msg_id`)."""
        subject = room_log_partitioned(event.room_id, self.partitions)
        seq = self._stream(self._log).store(subject, encode(event), msg_id, self.clock())
        self._wake()
        return seq

    async def append_many(
        self, items: Iterable[tuple[LogEvent, str]], *, window: int = 1000
    ) -> list[int]:
        """`append` for each `(event, msg_id)`, in order."""
        if window < 1:
            raise ValueError("window must be at least 1")
        return [await self.append(event, msg_id) for event, msg_id in items]

    async def publish_event(self, room_id: str, name: str, message: Message, event_id: str) -> int:
        """Append a public event, deduplicated by `event_id`."""
        stream = self._stream(self._events)
        return stream.store(public_event(room_id, name), encode(message), event_id, self.clock())

    async def publish_events(
        self, events: Iterable[tuple[str, str, Message, str]], *, window: int = 1000
    ) -> list[int]:
        """`publish_event` for each `(room_id, name, message, event_id)`, in order."""
        if window < 1:
            raise ValueError("window must be at least 1")
        return [await self.publish_event(*event) for event in events]

    async def publish_event_batch(self, events: Iterable[tuple[str, str, Message, str]]) -> int:
        """`publish_events`; the sequence of the last event stored (0 when none was new)."""
        before = len(self._stream(self._events).entries)
        stored = [seq for seq in await self.publish_events(events) if seq > before]
        return stored[-1] if stored else 0

    async def last_seq(self) -> int:
        """The sequence of the last event in the log (0 when empty)."""
        return len(self.entries())

    def reader(
        self, partitions: Iterable[int] | None = None, start_seq: int = 1
    ) -> MemoryLogReader:
        """A reader of these partitions (None = all) from `start_seq`, not yet open."""
        return MemoryLogReader(self, partitions, start_seq)

    def _wake(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    async def appended_since(self, count: int, timeout: float | None) -> None:
        """Wait (at most `timeout` seconds) for the log to hold more than `count` entries."""
        if len(self.entries()) > count:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._appended.wait(), timeout)


class MemoryLogReader:
    """A `LogReaderPort` over a `MemoryRoomLog`: records in order, following appends."""

    def __init__(
        self,
        log: MemoryRoomLog,
        partitions: Iterable[int] | None,
        start_seq: int,
        batch: int = 2000,
    ) -> None:
        self._log = log
        self._partitions = None if partitions is None else {str(p) for p in partitions}
        if self._partitions is not None and not self._partitions:
            raise ValueError("no partitions to read (None reads them all)")
        self._next_seq = max(1, start_seq)
        self._batch = batch
        self._opened = False
        self._closed = False
        self.undecodable = 0
        """How many stored messages did not decode to a `LogEvent`."""

    @property
    def last_seq(self) -> int:
        """The sequence of the last record handed out (start_seq - 1 before any)."""
        return self._next_seq - 1

    async def __aenter__(self) -> MemoryLogReader:
        if self._opened or self._closed:
            raise RuntimeError("a LogReader opens once")
        self._log.entries()  # no stream at all: a wiring bug, as for JetStream
        self._opened = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True

    def __aiter__(self) -> AsyncIterator[LogRecord]:
        return self._records()

    async def _records(self) -> AsyncIterator[LogRecord]:
        while not self._closed:
            for record in await self.next_batch():
                yield record

    async def next_batch(self, max_wait: float | None = None) -> list[LogRecord]:
        """The next records in order (at least one), or [] once `max_wait` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = None if max_wait is None else loop.time() + max_wait
        while not self._closed:
            records = self._take()
            if records:
                return records
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                break
            await self._log.appended_since(self._next_seq - 1, timeout)
        return []

    def _take(self) -> list[LogRecord]:
        entries = self._log.entries()
        records: list[LogRecord] = []
        while self._next_seq <= len(entries) and len(records) < self._batch:
            seq = self._next_seq
            self._next_seq += 1
            subject, data, stored_at = entries[seq - 1]
            if self._partitions is None or subject.split(".")[2] in self._partitions:
                records.append(LogRecord(seq, self._decode(data), data, stored_at))
        return records

    def _decode(self, data: bytes) -> LogEvent | None:
        """The event, or None (counted) for bytes that are no valid log event: the append
        does not validate, so an event built wrong is stored and read back as None."""
        try:
            event = decode(data)
        except Exception:  # as in `LogReader`: one bad message never stops a reader
            event = None
        if isinstance(event, LogEvent):
            return event
        self.undecodable += 1
        return None


__all__ = ["MemoryLogReader", "MemoryRoomLog"]
