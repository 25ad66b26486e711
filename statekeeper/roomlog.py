"""The room log on JetStream: edges append to it, the statekeeper reads it in order.

One stream (`LOG_STREAM`) holds every room's log. Publishers write ``stagecast.log.<room>``;
the stream's subject transform stores each event as ``stagecast.logp.<p>.<room>`` where
``p = partition(N, room)``, so a statekeeper owning partition ``p`` reads only its rooms.
Every append carries a ``Nats-Msg-Id``: retrying an append with the same id within the
2-minute duplicate window stores nothing new and answers with the original sequence, so an
append that timed out can simply be retried.

`LogReader` reads the log from a stream sequence, in order, and keeps following live appends.
It uses an ephemeral pull consumer with no acks (durability comes from the statekeeper's
snapshots and sequence numbers, not from consumer state) and pipelined pull requests of
large batches; a gap in delivery, a deleted consumer, a server restart or a silent stall
makes it recreate the consumer from the last sequence it handed out, so no event is skipped
and none is handed out twice.

The public events stream (`EVENTS_STREAM`, ``stagecast.events.<room>.<event>``) is written
with `RoomLog.publish_event`, deduplicated by event id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from schemas.codec import MAX_FRAME_BYTES, Message, decode, encode
from schemas.log import LogEvent
from schemas.subjects import (
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    LOG_STREAM,
    LOG_SUBJECTS,
    log_partition_filter,
    log_transform_destination,
    public_event,
    room_log,
)

__all__ = [
    "DUPLICATE_WINDOW",
    "EVENTS_MAX_AGE",
    "LogReader",
    "LogRecord",
    "LogUnavailable",
    "RoomLog",
    "log_partitions_filter",
]

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = 120.0
"""Seconds within which a repeated ``Nats-Msg-Id`` is recognised and not stored again."""
EVENTS_MAX_AGE = 7 * 24 * 3600.0
"""Public events are kept this many seconds."""
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES
"""Largest stored message, headers included (the server's default max_payload too)."""

_MSG_ID = "Nats-Msg-Id"
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"


class LogUnavailable(RuntimeError):
    """The log could not be read for `outage` seconds (NATS down, stream missing)."""

    def __init__(self, stream: str, outage: float, reason: str) -> None:
        super().__init__(f"room log {stream} unavailable for {outage:.0f}s: {reason}")
        self.stream = stream
        self.outage = outage
        self.reason = reason


class LogRecord(NamedTuple):
    """One stored log entry: its stream sequence, the event (None if undecodable), the bytes,
    and when JetStream stored it (milliseconds since the epoch; 0 when unknown)."""

    seq: int
    event: LogEvent | None
    data: bytes
    stored_at: int = 0


def log_partitions_filter(partitions: Iterable[int] | None) -> list[str]:
    """Consumer filter subjects for a set of partitions ([] = every partition)."""
    if partitions is None:
        return []
    return sorted({log_partition_filter(p) for p in partitions})


# --------------------------------------------------------------------------- the log


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
            headers={_MSG_ID: msg_id},
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
            headers={_MSG_ID: event_id},
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
        async with _AckWindow(_connection_of(self.js), self.ack_timeout) as acks:
            for subject, payload, msg_id in items:
                if acks.unconfirmed >= window:
                    seqs.append(await acks.confirm_next())
                await acks.publish(subject, payload, {_MSG_ID: msg_id})
            while acks.unconfirmed:
                seqs.append(await acks.confirm_next())
        return seqs

    # ------------------------------------------------------------------ reading

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


# --------------------------------------------------------------------------- the reader


class LogReader:
    """An ordered, batched reader of the room log from a stream sequence.

    ``async with RoomLog.reader(partitions, start_seq) as reader:`` then either
    ``async for seq, event, data in reader`` or ``await reader.next_batch(max_wait)`` (the
    cheaper way: a list of records per call). `event` is None for a message that does not
    decode to a `LogEvent`; it is logged and counted in `undecodable`, and reading goes on.
    `last_seq` is the sequence of the last record handed out.
    """

    def __init__(
        self,
        js: JetStreamContext,
        partitions: Iterable[int] | None,
        start_seq: int = 1,
        *,
        stream: str = LOG_STREAM,
        batch: int = 2000,
        max_bytes: int = 16 * 1024 * 1024,
        heartbeat: float = 2.0,
        expires: float = 30.0,
        max_outage: float = 120.0,
        inactive_threshold: float = 60.0,
    ) -> None:
        if batch < 2:
            raise ValueError("batch must be at least 2")
        if heartbeat * 2 > expires:
            raise ValueError("heartbeat must be at most half of expires")
        self._js = js
        self._nc = _connection_of(js)
        self._api_prefix = _api_prefix_of(js)
        self.stream = stream
        self.filters = log_partitions_filter(partitions)
        if partitions is not None and not self.filters:
            raise ValueError("no partitions to read (None reads them all)")
        self._next_seq = max(1, start_seq)
        self._batch = batch
        self._max_bytes = max_bytes
        self._heartbeat = heartbeat
        self._expires = expires
        self._max_outage = max_outage
        self._inactive_threshold = inactive_threshold

        self._sub: Subscription | None = None
        self._inbox = ""
        self._deliver = b""
        self._generation = 0
        self._consumer: str | None = None
        self._consumer_token = b""
        self._buffer: collections.deque[_Delivery] = collections.deque()
        self._wakeup = asyncio.Event()
        self._outstanding = 0
        self._expected_dseq = 1
        self._need_reset = False
        self._last_activity = time.monotonic()
        self._reconnects = 0
        self._outage_since: float | None = None
        self._retry_at = 0.0
        self._backoff = _FIRST_BACKOFF
        self._closed = False

        self.fast_path = False
        """True when deliveries bypass nats-py's message objects (see `_FastDelivery`)."""
        self.undecodable = 0
        """How many stored messages did not decode to a `LogEvent`."""
        self.resets = 0
        """How many times the consumer was recreated after a gap, error or stall."""

    @property
    def last_seq(self) -> int:
        """The stream sequence of the last record handed out (start_seq - 1 before any)."""
        return self._next_seq - 1

    @property
    def consumer_name(self) -> str | None:
        """The current ephemeral consumer's name."""
        return self._consumer

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Subscribe to a private inbox and create the consumer."""
        if self._sub is not None or self._closed:
            raise RuntimeError("a LogReader opens once")
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            f"{self._inbox}.*",
            cb=self._on_msg,
            pending_msgs_limit=4 * self._batch + 1024,
            pending_bytes_limit=4 * self._max_bytes + MAX_MESSAGE_BYTES,
        )
        self.fast_path = _FastDelivery.route(self._nc, self._sub, self._on_raw)
        self._forget_consumer()
        try:
            for _ in range(100_000):  # bounded by max_outage, which raises
                if await self._create_consumer(None, opening=True):
                    return
                await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Unsubscribe and delete the consumer (best effort). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._wakeup.set()
        sub, self._sub = self._sub, None
        if sub is not None:
            _FastDelivery.unroute(self._nc, sub)
            if not self._nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        await self._delete_consumer()

    async def __aenter__(self) -> LogReader:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[LogRecord]:
        return self._records()

    async def _records(self) -> AsyncIterator[LogRecord]:
        while not self._closed:
            for record in await self.next_batch():
                yield record

    # ------------------------------------------------------------------ reading

    async def next_batch(self, max_wait: float | None = None) -> list[LogRecord]:
        """The next records in order (at least one), or [] once `max_wait` seconds pass.

        While NATS is unreachable it keeps trying to recreate the consumer, one attempt at a
        time, so `max_wait` holds (give or take one 0.5 s request); it raises
        `LogUnavailable` once that has failed for `max_outage` seconds, and
        `nats.errors.ConnectionClosedError` once the client is closed.
        """
        deadline = None if max_wait is None else time.monotonic() + max_wait
        while not self._closed:
            if self._buffer:
                records = self._drain()
                if self._need_reset:
                    await self._reset()
                elif self._outstanding <= self._batch // 2:
                    await self._pull(self._batch - self._outstanding)
                if records:
                    return records
                continue
            await self._check_health(deadline)
            if self._buffer:
                continue
            wait = self._heartbeat
            if self._consumer is None:  # come back for the next attempt
                wait = min(wait, max(0.01, self._retry_at - time.monotonic()))
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)
        return []

    def _drain(self) -> list[LogRecord]:
        """Turn buffered deliveries into records, in order, stopping at anything amiss."""
        records: list[LogRecord] = []
        append = records.append
        buffer = self._buffer
        consumer = self._consumer_token
        expected = self._expected_dseq
        next_seq = self._next_seq
        delivered = 0
        limit = self._batch
        while buffer and len(records) < limit:
            subject, reply, data, headers = buffer.popleft()
            if not reply:  # a status message; only the current request inbox's count
                if subject == self._deliver:
                    self._on_status(headers)
                    if self._need_reset:
                        break
                continue
            tokens = reply.split(b".")
            if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<n>.<sseq>.<dseq>.<ts>.<pending>
                name, sseq, dseq, ts = tokens[3], int(tokens[5]), int(tokens[6]), tokens[7]
            elif len(tokens) >= 12:  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<n>.<sseq>...
                name, sseq, dseq, ts = tokens[5], int(tokens[7]), int(tokens[8]), tokens[9]
            else:
                log.warning("room log: unexpected reply subject %r; recreating consumer", reply)
                self._need_reset = True
                break
            if name != consumer:  # still in flight from a consumer we replaced
                continue
            delivered += 1
            if dseq != expected:
                log.info("room log: delivery gap (expected %d, got %d)", expected, dseq)
                self._need_reset = True
                break
            expected = dseq + 1
            if sseq < next_seq:
                continue
            next_seq = sseq + 1
            stored_at = int(ts) // 1_000_000 if ts.isdigit() else 0
            append(LogRecord(sseq, self._decode(sseq, subject, data), data, stored_at))
        self._expected_dseq = expected
        self._next_seq = next_seq
        self._outstanding -= delivered
        self._last_activity = time.monotonic()
        return records

    def _decode(self, seq: int, subject: bytes, data: bytes) -> LogEvent | None:
        try:
            event = decode(data)
        except Exception as exc:  # one bad message must never stop the reader
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if isinstance(event, LogEvent):
                return event
            reason = f"{event.TYPE!r} is not a log event"
        self.undecodable += 1
        log.warning("room log: undecodable message seq=%d on %r (%s)", seq, subject, reason)
        return None

    def _on_status(self, headers: bytes | dict[str, str] | None) -> None:
        status, description, pending = _parse_status(headers)
        if status == "100":  # idle heartbeat: the server still holds our pull request
            return
        if status in ("404", "408") or (
            status == "409" and description in ("Message Size Exceeds MaxBytes", "Batch Completed")
        ):  # a pull request ended; `pending` of its messages will not come
            self._outstanding = max(0, self._outstanding - pending) if pending >= 0 else 0
            return
        log.info("room log: consumer status %s %s; recreating consumer", status, description)
        self._need_reset = True

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._buffer.append((subject, reply, data, headers))
        self._wakeup.set()

    async def _on_msg(self, msg: Msg) -> None:  # used when the fast path is unavailable
        self._buffer.append((msg.subject.encode(), msg.reply.encode(), msg.data, msg.headers))
        self._wakeup.set()

    # ------------------------------------------------------------------ the consumer

    async def _check_health(self, deadline: float | None) -> None:
        if self._nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if self._consumer is not None:
            reconnected = int(self._nc.stats["reconnects"]) != self._reconnects
            stalled = time.monotonic() - self._last_activity > 3 * self._heartbeat
            if self._need_reset or reconnected or stalled:
                if stalled:
                    log.info("room log: no delivery or heartbeat; recreating consumer")
                await self._reset()
        if self._consumer is None:
            await self._create_consumer(deadline)
        elif self._outstanding <= self._batch // 2:
            await self._pull(self._batch - self._outstanding)

    async def _reset(self) -> None:
        """Drop the consumer; the next health check recreates it from the next sequence."""
        self.resets += 1
        name = self._consumer
        self._forget_consumer()
        if name is not None and self._nc.is_connected:  # best effort: it also expires
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(self._js.delete_consumer(self.stream, name), 0.5)

    def _forget_consumer(self) -> None:
        self._consumer = None
        self._consumer_token = b""
        self._generation += 1
        self._deliver = f"{self._inbox}.{self._generation}".encode()
        self._buffer.clear()
        self._outstanding = 0
        self._expected_dseq = 1
        self._need_reset = False
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        self._retry_at = now

    async def _create_consumer(self, deadline: float | None, opening: bool = False) -> bool:
        """One attempt (if one is due) to create the consumer at the next sequence."""
        if self._nc.is_closed or self._closed:
            raise nats.errors.ConnectionClosedError
        now = time.monotonic()
        if now < self._retry_at:
            return False
        outage_since = self._outage_since if self._outage_since is not None else now
        if not self._nc.is_connected:  # nats-py is reconnecting: a request would only wait
            reason = "NATS client disconnected"
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._next_seq,
                ack_policy=AckPolicy.NONE,
                replay_policy=ReplayPolicy.INSTANT,
                inactive_threshold=self._inactive_threshold,
                num_replicas=1,
                mem_storage=True,
            )
            if len(self.filters) == 1:
                config.filter_subject = self.filters[0]
            elif self.filters:
                config.filter_subjects = list(self.filters)
            timeout = 2.0 if deadline is None else max(0.5, min(2.0, deadline - now))
            self._reconnects = int(self._nc.stats["reconnects"])
            try:
                info = await self._js.add_consumer(self.stream, config, timeout=timeout)
            except nats.js.errors.NotFoundError:
                if opening:  # no stream at all: a wiring bug (RoomLog.ensure not run)
                    raise
                reason = f"stream {self.stream} not found"
            except (nats.errors.Error, TimeoutError) as exc:
                reason = repr(exc)
            else:
                self._consumer = str(info.name)
                self._consumer_token = self._consumer.encode()
                self._outage_since = None
                self._backoff = _FIRST_BACKOFF
                self._last_activity = time.monotonic()
                await self._pull(self._batch)
                return True
        outage = time.monotonic() - outage_since
        if outage > self._max_outage:
            raise LogUnavailable(self.stream, outage, reason)
        log.debug("room log: cannot create consumer yet: %s", reason)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(_MAX_BACKOFF, self._backoff * 2)
        return False

    async def _pull(self, count: int) -> None:
        if self._consumer is None or count <= 0 or not self._nc.is_connected:
            return  # while reconnecting a pull would only be queued for a dead consumer
        request = {
            "batch": count,
            "max_bytes": self._max_bytes,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        subject = f"{self._api_prefix}.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}"
        try:
            await self._nc.publish(
                subject, json.dumps(request).encode(), reply=self._deliver.decode()
            )
        except nats.errors.Error as exc:  # disconnected: the health check recovers
            log.debug("room log: pull request not sent: %r", exc)
            return
        self._outstanding += count

    async def _delete_consumer(self) -> None:
        name, self._consumer = self._consumer, None
        if name is None or not self._nc.is_connected:
            return
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await asyncio.wait_for(self._js.delete_consumer(self.stream, name), 1.0)


_Delivery = tuple[bytes, bytes, bytes, "bytes | dict[str, str] | None"]
"""(subject, reply, payload, headers: raw bytes on the fast path, parsed otherwise)."""


def _parse_status(headers: bytes | dict[str, str] | None) -> tuple[str, str, int]:
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


# --------------------------------------------------------------------------- pipelined appends


class _AckWindow:
    """Pipelined JetStream publishes: publish `n` asks for its ack on ``<inbox>.<n>``.

    nats-py's `publish_async` costs 40-50 µs of CPU per message here (a future, a token, a
    parsed `PubAck`, a callback task hop); this costs about half: publishes are queued
    without yielding (one socket write per window) and acks arrive raw (`_FastDelivery`).
    """

    def __init__(self, nc: NATS, ack_timeout: float) -> None:
        self._nc = nc
        self._ack_timeout = ack_timeout
        self._inbox = nc.new_inbox()
        self._cut = len(self._inbox) + 1
        self._acks: dict[int, tuple[bytes, bytes | dict[str, str] | None]] = {}
        self._arrived = asyncio.Event()
        self._sent = 0
        self._confirmed = 0
        self._sub: Subscription | None = None

    @property
    def unconfirmed(self) -> int:
        """Publishes whose ack has not been taken yet."""
        return self._sent - self._confirmed

    async def __aenter__(self) -> _AckWindow:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        _FastDelivery.route(self._nc, self._sub, self._on_raw)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            _FastDelivery.unroute(self._nc, sub)
            if not self._nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._acks[int(subject[self._cut :])] = (data, headers)
        self._arrived.set()

    async def _on_msg(self, msg: Msg) -> None:  # used when the fast path is unavailable
        self._acks[int(msg.subject[self._cut :])] = (msg.data, msg.headers)
        self._arrived.set()

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Queue one publish (it reaches the socket when the caller next waits)."""
        reply = f"{self._inbox}.{self._sent}"
        self._sent += 1
        await self._nc.publish(subject, payload, reply=reply, headers=headers)

    async def confirm_next(self) -> int:
        """Wait for the oldest unconfirmed publish's ack; its stream sequence.

        Raises `nats.errors.TimeoutError`, `nats.js.errors.NoStreamResponseError` or the
        `APIError` the server answered.
        """
        n = self._confirmed
        deadline = time.monotonic() + self._ack_timeout
        while n not in self._acks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise nats.errors.TimeoutError
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        data, headers = self._acks.pop(n)
        self._confirmed += 1
        if not data:
            status, description, _ = _parse_status(headers)
            if status == "503":
                raise nats.js.errors.NoStreamResponseError
            raise nats.js.errors.APIError(code=int(status or 0), description=description)
        ack = json.loads(data)
        if "error" in ack:
            raise nats.js.errors.APIError.from_error(ack["error"])
        return int(ack["seq"])


# --------------------------------------------------------------------------- nats-py internals
# nats-py==2.16.0 is pinned in pyproject; test_roomlog fails loudly if these move.


def _connection_of(js: JetStreamContext) -> NATS:
    """The client a JetStream context was made from (nats-py keeps it private)."""
    nc = getattr(js, "_nc", None)
    if not isinstance(nc, NATS):
        raise TypeError("nats-py internals moved: JetStreamContext._nc is not a client")
    return nc


def _api_prefix_of(js: JetStreamContext) -> str:
    """The JetStream API prefix (``$JS.API`` unless a domain is set)."""
    prefix = getattr(js, "_prefix", None)
    if not isinstance(prefix, str):
        raise TypeError("nats-py internals moved: JetStreamContext._prefix is not a string")
    return prefix


class _FastDelivery:
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

    _routes: weakref.WeakKeyDictionary[NATS, dict[int, _RawHandler]] = weakref.WeakKeyDictionary()

    @classmethod
    def route(cls, nc: NATS, sub: Subscription, handler: _RawHandler) -> bool:
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
        nc: NATS, original: Callable[..., Awaitable[None]], routes: dict[int, _RawHandler]
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


_RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], None]
