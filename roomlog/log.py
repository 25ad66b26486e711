"""The room log on JetStream: edges append to it, the statekeeper reads it in order.

One stream (`LOG_STREAM`) holds every room's log. Publishers write ``stagecast.log.<room>``;
the stream's subject transform stores each event as ``stagecast.logp.<p>.<room>`` where
``p = partition(N, room)``, so a statekeeper owning partition ``p`` reads only its rooms.
Every append carries a ``Nats-Msg-Id``: retrying an append with the same id within the
2-minute duplicate window stores nothing new and answers with the original sequence, so an
append that timed out can simply be retried, and is: across a leader election or a
reconnect, each append is repeated with its id until `RetryPolicy.deadline` (`roomlog.retry`).

Both streams have `replicas` copies (1 on a single server, 3 in a cluster). `ensure` never
lowers the replicas a stream already has and never removes data; raising them is a stream
update, which JetStream carries out by copying the stream to the new peers.

`LogReader` (`roomlog.reader`) reads it back in order; appends are pipelined through the ack
window of `roomlog.appends`; every nats-py private name is in `roomlog.jetstream`.

The public events stream (`EVENTS_STREAM`, ``stagecast.events.<room>.<event>``) is written
with `RoomLog.publish_event`, deduplicated by event id; the statekeeper's batches of them go
out with `RoomLog.publish_event_batch`, as JetStream fast batches (`roomlog.fastbatch`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

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

from roomlog.acks import PublishAcks
from roomlog.appends import AckWindow
from roomlog.errors import StreamNotEnsured
from roomlog.fastbatch import BatchUnsupported, FastBatcher
from roomlog.jetstream import MSG_ID, connection_of
from roomlog.reader import MAX_MESSAGE_BYTES, LogReader, LogRecord
from roomlog.retry import (
    RetryBudget,
    RetryBudgetSpent,
    RetryPolicy,
    WriteOutage,
    pause,
    transient,
)
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

__all__ = ["DUPLICATE_WINDOW", "EVENTS_MAX_AGE", "MAX_REPLICAS", "RoomLog"]

log = logging.getLogger("stagecast.roomlog")

T = TypeVar("T")

DUPLICATE_WINDOW = 120.0
"""Seconds within which a repeated ``Nats-Msg-Id`` is recognised and not stored again."""
EVENTS_MAX_AGE = 7 * 24 * 3600.0
"""Public events are kept this many seconds."""
MAX_REPLICAS = 5
"""JetStream's limit on a stream's replicas."""
FAST_BATCH_SERVER = (2, 14)
"""The first nats-server (major, minor) with fast batch publishes (``allow_batched``)."""
_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"
_STREAM_CHECK_S = 1.0
_NO_SUITABLE_PEERS = 10005  # "insufficient resources": too few JetStream servers (yet)
_CLUSTER_UNAVAILABLE = 10008  # "JetStream system temporarily unavailable"


class RoomLog:
    """Append to and read from the room log and the public events stream.

    `partitions` fixes the stream's subject transform (how many partitions rooms hash to)
    when `ensure` creates the stream; an existing stream keeps its own. Only the
    statekeeper calls `ensure`: an edge waits for the streams (`has_stream`). `replicas`
    (1 to `MAX_REPLICAS`) is the least number of copies `ensure` gives each stream.
    `ack_timeout` bounds one attempt of an append; `retry` how long and how often a failed
    one is repeated (`roomlog.retry`); an append waits at most the longer of the two.
    `budget` is the retry token bucket every append of this log draws its retries from
    (`roomlog.retry.RetryBudget`; one per process: a fresh default one when None). With it
    spent, a failed append raises `RetryBudgetSpent` instead of retrying.
    With `shared_inbox`, single appends and public events take their acks on one inbox
    subscription of this log (`roomlog.acks.PublishAcks`) instead of a nats-py request
    each: the same outcomes, for about a third of the CPU.
    """

    def __init__(
        self,
        js: JetStreamContext,
        partitions: int = 1,
        *,
        replicas: int = 1,
        ack_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        events_max_age: float = EVENTS_MAX_AGE,
        budget: RetryBudget | None = None,
        shared_inbox: bool = False,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas must be between 1 and {MAX_REPLICAS}, not {replicas}")
        self.js = js
        self.partitions = partitions
        self.replicas = replicas
        self.ack_timeout = ack_timeout
        self.retry = retry if retry is not None else RetryPolicy()
        if self.retry.deadline >= DUPLICATE_WINDOW:
            raise ValueError("the retry deadline must be shorter than the duplicate window")
        self.events_max_age = events_max_age
        self.budget = budget if budget is not None else RetryBudget()
        """The retries every append of this log shares (`RetryBudget`)."""
        self.outages = {stream: WriteOutage(stream) for stream in (LOG_STREAM, EVENTS_STREAM)}
        """Each stream's write outages (one log line per episode, counters)."""
        self._stream_checks: dict[str, tuple[asyncio.Future[bool], float]] = {}
        self.acks = PublishAcks(connection_of(js)) if shared_inbox else None
        """Where single publishes take their acks with `shared_inbox` (else None)."""
        """The last "does this stream exist" check per stream, and when it started."""
        self.fast_batches = True
        """Whether `publish_event_batch` sends fast batches (False once the events stream
        or the server said it does not take them)."""

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
            # Fast batches (`publish_event_batch`); left out for a server before 2.14, which
            # does not know the field (and refuses it in strict mode).
            allow_batched=True if self._server_takes_fast_batches() else None,
        )

    def _server_takes_fast_batches(self) -> bool:
        """Whether the server this log is connected to is nats-server 2.14 or later."""
        try:
            version = connection_of(self.js).connected_server_version
            return (version.major, version.minor) >= FAST_BATCH_SERVER
        except (TypeError, ValueError):  # no client, or a version that is not semver
            return False

    async def ensure(self) -> None:
        """Create both streams, or update them to this configuration. Safe to call often.

        A stream keeps the replicas it has when it has more than `replicas`; one with fewer
        is updated to `replicas` (logged). Raises `StreamNotEnsured` when JetStream refuses
        (more replicas than the cluster has servers, say).
        """
        for config in (self.log_stream_config(), self.events_stream_config()):
            await self._ensure_stream(config)

    async def _ensure_stream(self, config: StreamConfig) -> None:
        """`_ensure_stream_once`, again while the cluster cannot place the replicas yet
        (a node starting or restarting), until the retry deadline."""
        end = time.monotonic() + self.retry.deadline
        for n in itertools.count():
            try:
                await self._ensure_stream_once(config)
                return
            except StreamNotEnsured as exc:
                cause = exc.__cause__
                placing = isinstance(cause, nats.js.errors.APIError) and cause.err_code in (
                    _NO_SUITABLE_PEERS,
                    _CLUSTER_UNAVAILABLE,
                )
                if not placing:
                    raise
                if n == 0:
                    log.warning("%s; retrying until %.0f s have passed", exc, self.retry.deadline)
                if not await pause(n, self.retry, end):
                    raise

    async def _ensure_stream_once(self, config: StreamConfig) -> None:
        name = str(config.name)
        wanted = self.replicas
        try:
            try:
                info = await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(config)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_EXISTS:  # else another service just made it
                        raise
                else:
                    log.info("created stream %s with %d replica(s)", name, wanted)
                    return
                info = await self.js.stream_info(name)
            current = info.config.num_replicas or 1
            config.num_replicas = max(current, wanted)
            if info.config.subject_transform is not None:
                # The partitions are fixed when the stream is created: an update must not
                # re-hash every later append.
                config.subject_transform = info.config.subject_transform
            if current < wanted:
                log.warning("stream %s: raising replicas from %d to %d", name, current, wanted)
            elif current > wanted:
                log.info("stream %s keeps its %d replicas (asked for %d)", name, current, wanted)
            await self.js.update_stream(config)
        except nats.js.errors.APIError as exc:
            if isinstance(exc, nats.js.errors.NotFoundError):
                raise
            raise StreamNotEnsured(name, config.num_replicas or wanted, str(exc)) from exc

    async def has_stream(self, stream: str = LOG_STREAM, timeout: float = _STREAM_CHECK_S) -> bool:
        """Whether `stream` exists now (False too when JetStream does not answer in time).

        Only the statekeeper creates the streams (`ensure`); a service that only appends or
        reads (an edge) asks this until they exist, so it never fixes the partitions."""
        try:
            await asyncio.wait_for(self.js.stream_info(stream), timeout)
        except (nats.errors.Error, TimeoutError):
            return False
        return True

    # ------------------------------------------------------------------ appends

    async def append(
        self, event: LogEvent, msg_id: str, *, retry: RetryPolicy | None = None
    ) -> int:
        """Append one event; returns its stream sequence.

        A `msg_id` seen within the duplicate window returns the original sequence and
        stores nothing. A transient failure (an election, a reconnect) is retried with the
        same id until the retry deadline. Raises nats-py errors (`nats.errors.TimeoutError`,
        `nats.js.errors.NoStreamResponseError`, `APIError`) when the append is not
        confirmed by then, or at once when it cannot be (no stream, a refused message);
        retrying with the same `msg_id` is safe. `retry` overrides this log's policy for
        this append.
        """
        attempt = self._publisher(room_log(event.room_id), encode(event), msg_id)
        return await self._retried(LOG_STREAM, attempt, retry)

    async def append_many(
        self, items: Iterable[tuple[LogEvent, str]], *, window: int = 1000
    ) -> list[int]:
        """Append many `(event, msg_id)` pairs, pipelined; returns their sequences in order.

        At most `window` appends are unconfirmed at once. A transient failure makes it
        publish again, with the same ids, from the first unconfirmed append, until the retry
        deadline; then (or at once, for a failure that is not transient) the rest is
        abandoned and the error raised. Events already stored stay stored, and retrying the
        whole batch with the same ids stores each event once.
        """
        return await self._pipelined_retried(
            LOG_STREAM,
            [(room_log(event.room_id), encode(event), msg_id) for event, msg_id in items],
            window,
        )

    async def publish_event(self, room_id: str, name: str, message: Message, event_id: str) -> int:
        """Append a public event to ``stagecast.events.<room>.<name>``, deduplicated by id.

        Retried like `append`."""
        attempt = self._publisher(public_event(room_id, name), encode(message), event_id)
        return await self._retried(EVENTS_STREAM, attempt)

    async def publish_events(
        self, events: Iterable[tuple[str, str, Message, str]], *, window: int = 1000
    ) -> list[int]:
        """`publish_event` for many `(room_id, name, message, event_id)`, pipelined.

        Same contract as `append_many`: sequences in order, the first failure raised, a
        retry with the same ids stores nothing twice.
        """
        return await self._pipelined_retried(
            EVENTS_STREAM,
            [
                (public_event(room_id, name), encode(message), event_id)
                for room_id, name, message, event_id in events
            ],
            window,
        )

    async def publish_event_batch(self, events: Iterable[tuple[str, str, Message, str]]) -> int:
        """`publish_events` without each event's sequence, and with one ack per hundreds of
        events instead of one each: they go out as JetStream fast batches
        (`roomlog.fastbatch`). Returns the sequence of the last event stored (0 when none
        was new, or none was given).

        Each event is stored as `publish_event` stores it (its subject, payload and
        ``Nats-Msg-Id``), in order. Where the events stream or the server does not take fast
        batches, they are published the ordinary way. Retried like `publish_events`: a
        transient failure publishes the whole batch again, with the same ids.
        """
        subject_of: dict[tuple[str, str], str] = {}  # a batch is mostly one room's few events
        items: list[tuple[str, bytes, str]] = []
        for room_id, name, message, event_id in events:
            subject = subject_of.get((room_id, name))
            if subject is None:
                subject = subject_of[room_id, name] = public_event(room_id, name)
            items.append((subject, encode(message), event_id))
        if not items:
            return 0
        last: list[int] = []

        async def attempt(timeout: float) -> None:
            last.clear()
            if self.fast_batches:
                try:
                    async with FastBatcher(connection_of(self.js), timeout) as batcher:
                        last.append(await batcher.publish(items))
                    return
                except BatchUnsupported as exc:
                    if exc.lasting:
                        log.warning("%s takes no fast batches (%s)", EVENTS_STREAM, exc)
                        self.fast_batches = False
            seqs: list[int] = []
            await self._pipelined(items, 1000, seqs, timeout)
            last.append(seqs[-1])

        await self._retried(EVENTS_STREAM, attempt)
        return last[0]

    def _publisher(
        self, subject: str, payload: bytes, msg_id: str
    ) -> Callable[[float], Awaitable[int]]:
        """One attempt of a deduplicated publish, for `_retried`: its sequence. On the shared
        inbox, `PublishAcks.publish` itself, so an append is three coroutines deep (`append`,
        `_retried`, the publish), not five (no wrapper per attempt, no list for its result)."""
        acks = self.acks
        if acks is not None:
            return functools.partial(acks.publish, subject, payload, msg_id)
        headers = {MSG_ID: msg_id}

        async def attempt(timeout: float) -> int:
            ack = await self.js.publish(subject, payload, timeout=timeout, headers=headers)
            return int(ack.seq)

        return attempt

    async def _pipelined_retried(
        self, stream: str, items: Sequence[tuple[str, bytes, str]], window: int
    ) -> list[int]:
        """`_pipelined`, started again from the first unconfirmed item after a failure."""
        if window < 1:
            raise ValueError("window must be at least 1")
        seqs: list[int] = []

        async def attempt(timeout: float) -> None:
            await self._pipelined(itertools.islice(items, len(seqs), None), window, seqs, timeout)

        await self._retried(stream, attempt)
        return seqs

    async def _retried(
        self,
        stream: str,
        attempt: Callable[[float], Awaitable[T]],
        retry: RetryPolicy | None = None,
    ) -> T:
        """Run `attempt(ack_timeout)` until it succeeds, retrying transient failures; what
        the attempt that succeeded returned."""
        policy = retry if retry is not None else self.retry
        if policy.deadline >= DUPLICATE_WINDOW:
            raise ValueError("the retry deadline must be shorter than the duplicate window")
        outage = self.outages[stream]
        end = time.monotonic() + max(policy.deadline, self.ack_timeout)
        budget = self.budget
        n = 0  # attempts failed so far
        while True:
            started = time.monotonic()
            # A short attempt has its retry paid ahead; with none to spare, this attempt is
            # the last: it waits for its ack the whole time instead of being sent again.
            reserved = budget.reserve(started)
            wait = min(self.ack_timeout, end - started) if reserved else end - started
            try:
                result = await attempt(max(0.05, wait))
            except Exception as exc:
                worth = await self._worth_retrying(stream, exc)
                now = time.monotonic()
                if worth and now < end and (reserved or budget.try_retry(now)):
                    if reserved:
                        budget.release(used=True)
                    outage.failed(exc)
                    if await pause(n, policy, end):
                        n += 1
                        continue
                    raise
                if reserved:
                    budget.release(used=False)
                if not worth or reserved:
                    raise
                raise RetryBudgetSpent(stream, exc) from exc
            if reserved:
                budget.release(used=False)
            budget.succeeded(time.monotonic())
            outage.succeeded(started)
            return result

    async def _worth_retrying(self, stream: str, exc: Exception) -> bool:
        """Transient, and (for a 503) the stream exists: it is only without a leader."""
        if not transient(exc):
            return False
        if not isinstance(exc, nats.js.errors.NoStreamResponseError):
            return True
        return await self._stream_exists(stream)

    async def _stream_exists(self, stream: str) -> bool:
        """Whether `stream` exists, asked at most once per `_STREAM_CHECK_S` however many
        appends fail at once (an election fails them all)."""
        now = time.monotonic()
        check = self._stream_checks.get(stream)
        if check is None or (check[0].done() and now - check[1] > _STREAM_CHECK_S):
            check = (asyncio.ensure_future(self._ask_stream_exists(stream)), now)
            self._stream_checks[stream] = check
        return await asyncio.shield(check[0])

    async def _ask_stream_exists(self, stream: str) -> bool:
        try:
            await asyncio.wait_for(self.js.stream_info(stream), _STREAM_CHECK_S)
        except nats.js.errors.NotFoundError:
            return False  # no such stream (ensure not run, or deleted): never retried
        except (nats.errors.Error, TimeoutError):
            return True  # no answer during an election: the retry deadline bounds it
        return True

    async def _pipelined(
        self,
        items: Iterable[tuple[str, bytes, str]],
        window: int,
        seqs: list[int],
        ack_timeout: float,
    ) -> None:
        """Publish `(subject, payload, msg_id)` with at most `window` unconfirmed at once,
        appending each confirmed sequence to `seqs` as it comes."""
        pending = iter(items)
        async with AckWindow(connection_of(self.js), ack_timeout) as acks:
            while True:
                # Fill the window in one write, then take acks until half of it is free.
                chunk = list(itertools.islice(pending, window - acks.unconfirmed))
                if chunk:
                    await acks.publish_many(chunk)
                if not acks.unconfirmed:
                    return
                seqs.append(await acks.confirm_next())
                while acks.unconfirmed > window // 2 or (not chunk and acks.unconfirmed):
                    seqs.append(await acks.confirm_next())

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
