"""The ordered reader of the room log: its own JetStream pull-consumer protocol.

`LogReader` reads the log from a stream sequence, in order, and keeps following live appends.
It uses an ephemeral pull consumer with no acks (durability comes from the statekeeper's
snapshots and sequence numbers, not from consumer state) and pipelined pull requests of
large batches; a gap in delivery, a deleted consumer, a server restart or a silent stall
(the NATS node holding the consumer died) makes it recreate the consumer from the last
sequence it handed out, so no event is skipped and none is handed out twice. The consumer
has one replica whatever the stream's: it is disposable by design.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ReplayPolicy,
)

from roomlog.errors import LogUnavailable
from roomlog.jetstream import Delivery, FastDelivery, api_prefix_of, connection_of, parse_status
from schemas.codec import MAX_FRAME_BYTES, decode
from schemas.log import LogEvent
from schemas.subjects import (
    LOG_STREAM,
    log_partition_filter,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = MAX_FRAME_BYTES
"""Largest stored message, headers included (the server's default max_payload too)."""

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


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


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        self._nc = connection_of(js)
        self._api_prefix = api_prefix_of(js)
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
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        """What `next_batch` awaits while nothing is buffered: set by the next delivery,
        by `close`, or by its own timer (a bare future, not `asyncio.wait_for` on an
        `Event`: that costs a task and two more loop steps at every wake-up, and a
        statekeeper in a join storm wakes a few hundred times a second)."""
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
        """True when deliveries bypass nats-py's message objects (see `FastDelivery`)."""
        self.undecodable = 0
        """How many stored messages did not decode to a `LogEvent`."""
        self.resets = 0
        """How many times the consumer was recreated after a gap, error or stall."""

    @property
    def last_seq(self) -> int:
        """The stream sequence of the last record handed out (start_seq - 1 before any)."""
        return self._next_seq - 1

    @property
    def buffered(self) -> int:
        """Deliveries received from the server and not yet handed out (a gauge's worth)."""
        return len(self._buffer)

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
        self.fast_path = FastDelivery.route(self._nc, self._sub, self._on_raw)
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
        self._wake()
        sub, self._sub = self._sub, None
        if sub is not None:
            await FastDelivery.drop(self._nc, sub)
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
            await self._sleep(wait)
        return []

    async def _sleep(self, seconds: float) -> None:
        """Wait until a delivery arrives, the reader closes, or `seconds` pass."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None:
            _expire(self._waiter)

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
        status, description, pending = parse_status(headers)
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
        self._wake()

    async def _on_msg(self, msg: Msg) -> None:  # used when the fast path is unavailable
        self._buffer.append((msg.subject.encode(), msg.reply.encode(), msg.data, msg.headers))
        self._wake()

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
                # Not the stream's replicas: the reader keeps its own position (the last
                # sequence handed out) and recreates a lost consumer from there (a stall
                # after its node died is noticed within 3 heartbeats), so a replicated
                # consumer would only add a raft round per delivery and change nothing.
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
