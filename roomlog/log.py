"""The room log on JetStream: edges append to it, the statekeeper reads it in order.

One stream (`LOG_STREAM`) holds every room's log. Publishers write ``stagecast.log.<room>``;
the stream's subject transform stores each event as ``stagecast.logp.<p>.<room>`` where
``p = partition(N, room)``, so a statekeeper owning partition ``p`` reads only its rooms.
Every append carries a ``Nats-Msg-Id``: retrying an append with the same id within the
2-minute duplicate window stores nothing new and answers with the original sequence, so an
append that timed out can simply be retried.

`LogReader` (`roomlog.reader`) reads it back in order; appends are pipelined through the ack
window of `roomlog.appends`; every nats-py private name is in `roomlog.jetstream`.

The public events stream (`EVENTS_STREAM`, ``stagecast.events.<room>.<event>``) is written
with `RoomLog.publish_event`, deduplicated by event id.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from roomlog.appends import AckWindow
from roomlog.jetstream import MSG_ID, connection_of
from roomlog.reader import MAX_MESSAGE_BYTES, LogReader, LogRecord
from schemas.codec import Message, encode
from schemas.log import LogEvent
from schemas.subjects import (
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    LOG_STREAM,
    LOG_SUBJECTS,
    log_transform_destination,
    public_event,
    room_log,
)

__all__ = ["DUPLICATE_WINDOW", "EVENTS_MAX_AGE", "RoomLog"]

DUPLICATE_WINDOW = 120.0
"""Seconds within which a repeated ``Nats-Msg-Id`` is recognised and not stored again."""
EVENTS_MAX_AGE = 7 * 24 * 3600.0
"""Public events are kept this many seconds."""
_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"


class RoomLog:
    """Append to and read from the room log and the public events stream.

    `partitions` fixes the stream's subject transform (how many partitions rooms hash to);
    changing it on an existing stream only affects events appended afterwards.
    """

    def __init__(
        self,
        js: JetStreamContext,
        partitions: int = 1,
        *,
        replicas: int = 1,
        ack_timeout: float = 5.0,
        events_max_age: float = EVENTS_MAX_AGE,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.js = js
        self.partitions = partitions
        self.replicas = replicas
        self.ack_timeout = ack_timeout
        self.events_max_age = events_max_age

    # ------------------------------------------------------------------ streams

    def log_stream_config(self) -> StreamConfig:
        """The room-log stream's configuration."""
        return StreamConfig(
            name=LOG_STREAM,
            description="Stagecast room log: every room's events, partitioned by room",
            subjects=[LOG_SUBJECTS],
            subject_transform=SubjectTransform(
                src=LOG_SUBJECTS, dest=log_transform_destination(self.partitions)
            ),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=MAX_MESSAGE_BYTES,
        )

    def events_stream_config(self) -> StreamConfig:
        """The public events stream's configuration."""
        return StreamConfig(
            name=EVENTS_STREAM,
            description="Stagecast public events for integrations",
            subjects=[EVENTS_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=MAX_MESSAGE_BYTES,
            max_age=self.events_max_age,
        )

    async def ensure(self) -> None:
        """Create both streams, or update them to this configuration. Safe to call often."""
        for config in (self.log_stream_config(), self.events_stream_config()):
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_EXISTS:
                    raise
                await self.js.update_stream(config)

    # ------------------------------------------------------------------ appends

    async def append(self, event: LogEvent, msg_id: str) -> int:
        """Append one event; returns its stream sequence.

        A `msg_id` seen within the duplicate window returns the original sequence and
        stores nothing. Raises nats-py errors (`nats.errors.TimeoutError`,
        `nats.js.errors.NoStreamResponseError`, `APIError`) when the append is not
        confirmed; retrying with the same `msg_id` is safe.
        """
        ack = await self.js.publish(
            room_log(event.room_id),
            encode(event),
            timeout=self.ack_timeout,
            headers={MSG_ID: msg_id},
        )
        return int(ack.seq)

    async def append_many(
        self, items: Iterable[tuple[LogEvent, str]], *, window: int = 1000
    ) -> list[int]:
        """Append many `(event, msg_id)` pairs, pipelined; returns their sequences in order.

        At most `window` appends are unconfirmed at once. On the first failure the rest is
        abandoned and the error raised; events already stored stay stored, and retrying the
        whole batch with the same ids stores each event once.
        """
        return await self._pipelined(
            ((room_log(event.room_id), encode(event), msg_id) for event, msg_id in items), window
        )

    async def publish_event(self, room_id: str, name: str, message: Message, event_id: str) -> int:
        """Append a public event to ``stagecast.events.<room>.<name>``, deduplicated by id."""
        ack = await self.js.publish(
            public_event(room_id, name),
            encode(message),
            timeout=self.ack_timeout,
            headers={MSG_ID: event_id},
        )
        return int(ack.seq)

    async def publish_events(
        self, events: Iterable[tuple[str, str, Message, str]], *, window: int = 1000
    ) -> list[int]:
        """`publish_event` for many `(room_id, name, message, event_id)`, pipelined.

        Same contract as `append_many`: sequences in order, the first failure raised, a
        retry with the same ids stores nothing twice.
        """
        return await self._pipelined(
            (
                (public_event(room_id, name), encode(message), event_id)
                for room_id, name, message, event_id in events
            ),
            window,
        )

    async def _pipelined(self, items: Iterable[tuple[str, bytes, str]], window: int) -> list[int]:
        """Publish `(subject, payload, msg_id)` with at most `window` unconfirmed at once."""
        if window < 1:
            raise ValueError("window must be at least 1")
        seqs: list[int] = []
        async with AckWindow(connection_of(self.js), self.ack_timeout) as acks:
            for subject, payload, msg_id in items:
                if acks.unconfirmed >= window:
                    seqs.append(await acks.confirm_next())
                await acks.publish(subject, payload, {MSG_ID: msg_id})
            while acks.unconfirmed:
                seqs.append(await acks.confirm_next())
        return seqs

    # ------------------------------------------------------------------ reading

    async def last_seq(self) -> int:
        """The sequence of the last event stored in the log (0 when it is empty)."""
        info = await self.js.stream_info(LOG_STREAM)
        return int(info.state.last_seq)

    def reader(
        self, partitions: Iterable[int] | None = None, start_seq: int = 1, **options: Any
    ) -> LogReader:
        """A `LogReader` of these partitions (None = all) from `start_seq` (not yet open)."""
        return LogReader(self.js, partitions, start_seq, **options)

    async def consume(
        self, partitions: Iterable[int] | None, start_seq: int, **options: Any
    ) -> AsyncGenerator[LogRecord, None]:
        """Yield `LogRecord`s from `start_seq` on, in order, following live appends.

        Close it (`contextlib.aclosing`) when done early, so the consumer is removed.
        """
        async with self.reader(partitions, start_seq, **options) as reader:
            async for record in reader:
                yield record
