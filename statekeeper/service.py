"""The statekeeper's shell: reads the room log, folds it, and carries out the outcomes.

One `Statekeeper` owns the log partitions it is given. On start it loads the last
snapshots and replays the log from the checkpoint + 1 (skipping, per room, what its
snapshot already holds); then it follows the live log. Outcomes go out as they are
decided: broadcasts and direct replies on core NATS, public events on the durable events
stream, roster rows and snapshots to SQL, timers back into the log, counts through the
coalescer.

`Statekeeper` follows the log and composes the parts with one job each: `Timers`
(`timers.py`: timers and its own appends), `CountPublisher` (`counts.py`), `Checkpoints`
(`checkpoints.py`: what SQL does not hold yet, and its commits), `Liveness`
(`liveness.py`: edges, and the own-link rule for judging silence) and `Placement`
(`placement.py`: forwarders for media).

When statekeepers share the partitions (`statekeeper.partitions`), a `Statekeeper` folds
one partition and carries a `Fence`: outcomes, its own log appends and public events go
out only while the partition's lease holds, and its store refuses a stale holder's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from roomlog.jetstream import pace_reads, publish_all
from roomlog.natslink import NatsLink
from roomlog.reader import LogReader
from roomlog.seam import CoreLink, LogReaderPort, RoomLogPort
from schemas import subjects
from schemas.api import MediaAssignment, MediaAssignRequest
from schemas.client import JoinAccepted
from schemas.clock import now_ms
from schemas.codec import encode
from schemas.log import LogEvent
from statekeeper.batches import BatchWriter
from statekeeper.checkpoints import Checkpoints
from statekeeper.counts import CountPublisher
from statekeeper.errors import LeaseLost
from statekeeper.fold import apply
from statekeeper.leases import Fence
from statekeeper.liveness import Liveness
from statekeeper.media import ForwarderTable, MediaPlanner
from statekeeper.outcomes import (
    Broadcast,
    CountsMoved,
    Direct,
    MediaChanged,
    PublicEvent,
    RevocationsChanged,
    RoomEnded,
    RosterJoin,
    RosterLeave,
    RosterUpdate,
    TimerDue,
)
from statekeeper.persistence import PersistenceHealth
from statekeeper.placement import Placement
from statekeeper.recent import RecentReplies
from statekeeper.snapshots import restore
from statekeeper.state import State
from statekeeper.store import Store
from statekeeper.timers import Timers

log = logging.getLogger("stagecast.statekeeper")

STOP_TIMEOUT_S = 5.0
"""How long `stop` waits for its tasks to end after cancelling them."""
YIELD_EVERY = 256
"""With a lease, the log reader lets other tasks run every this many events of a batch
(a long replay must not starve the lease renewals of its process)."""


@dataclasses.dataclass(slots=True)
class Tuning:
    """How often the statekeeper writes and checks things (tests shorten these)."""

    roster_flush_ms: int = 100
    roster_flush_ops: int = 5_000
    snapshot_every_ms: int = 5_000
    snapshot_every_events: int = 50_000
    count_tick_ms: int = 25
    outbox_gap_ms: float = 2.0
    """While the log is busy, the fold's messages to NATS (join replies, broadcasts) go out
    at most once per this many ms, together: one socket write for a few joins instead of
    one each. A message waits at most this long; after a quiet gap it goes at once. Not
    during recovery's replay (written after every batch, as with 0)."""
    read_gap_ms: float = 0.0
    """Once recovery is done, after a read that emptied the NATS socket the statekeeper
    leaves it unread this long (`roomlog.jetstream.pace_reads`): under a join storm one
    wake-up then reads, folds and answers ~10 joins instead of ~3, for about a quarter less
    CPU per join at 5 ms. Everything the statekeeper receives (log deliveries, lease
    requests) waits at most this much longer. 0 (the default): read whenever data arrives.
    Off by default while a lease test's one hang with it on (docs/benchmarks.md) is not
    explained."""
    edge_check_ms: int = 1_000
    edge_timeout_ms: int = 4_000
    forwarder_timeout_ms: int = 3_000
    agent_worker_timeout_ms: int = 3_000
    prune_every_ms: int = 60_000


class Statekeeper:
    """Folds the room log of its partitions and serves what it knows."""

    def __init__(
        self,
        nc: CoreLink,
        room_log: RoomLogPort,
        store: Store,
        *,
        partitions: tuple[int, ...] = (0,),
        tuning: Tuning | None = None,
        clock: Callable[[], int] = now_ms,
        fence: Fence | None = None,
    ) -> None:
        self.nc = nc
        self.fence = fence
        """The lease its partition is held by, when statekeepers share partitions: every
        write goes out only while it holds (`Fence.check`)."""
        self.room_log = room_log
        self.store = store
        self.partitions = partitions
        self.tuning = tuning or Tuning()
        self.clock = clock
        self.state = State()
        self.applied_seq = 0
        """The last log sequence folded."""
        self.events_folded = 0
        self.recent = RecentReplies()
        """The replies to actions sent lately, for an edge that missed one."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Any] = []
        self._caught_up = asyncio.Event()
        self._stopped = False
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_due = 0.0
        """The loop time from which the outbox may be written again (`outbox_gap_ms`)."""
        self._replay_target = 0
        self._healthy = True
        self.log_reader: LogReader | None = None
        """The open reader of the log while following it (`statekeeper.metrics` asks it
        how far behind the partition is)."""
        self.link: NatsLink | None = None
        """The NATS link's state and counters, when the wiring tracks it (`main`)."""
        self.persistence = PersistenceHealth()
        """Persistence counters, state and the items set aside (docs/configuration.md)."""
        self.writer = BatchWriter(room_log, store, self.persistence, clock, fence)
        self.timers = Timers(room_log, clock, self._spawn, fence)
        self.counts = CountPublisher(self._publish)
        self.checkpoints = Checkpoints(
            store=store,
            writer=self.writer,
            health=self.persistence,
            cadence=self.tuning,
            clock=clock,
            partitions=partitions,
            state=lambda: self.state,
            applied_seq=lambda: self.applied_seq,
        )
        self.liveness = Liveness(
            clock=clock,
            link_up=lambda: bool(self.nc.is_connected),
            edge_timeout_ms=self.tuning.edge_timeout_ms,
            rooms=lambda: self.state.rooms,
            append=self.timers.append_soon,
        )
        self.forwarders = ForwarderTable(self.tuning.forwarder_timeout_ms)
        self.placement = Placement(
            self.forwarders,
            clock=clock,
            state=lambda: self.state,
            caught_up=self._caught_up.is_set,
            append=self.timers.append_soon,
        )
        self.media = MediaPlanner(self._publish)
        self.agents: Any = None
        """The agent dispatcher, when the wiring runs one (`statekeeper.agents`)."""
        self._handlers = self._outcome_handlers()

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Recover from the last snapshot, then follow the log."""
        checkpoint, snapshots = await self.store.load()
        self.state = restore(snapshots, self.partitions)
        self.applied_seq = checkpoint
        self.checkpoints.started(checkpoint)
        for room in self.state.rooms.values():
            self.timers.rearm(room)
        self.liveness.start()
        self._subs.append(
            await self.nc.subscribe(subjects.EDGE_HEARTBEAT, cb=self.liveness.on_heartbeat)
        )
        self._subs.append(
            await self.nc.subscribe(
                subjects.FORWARDER_HEARTBEAT, cb=self.placement.on_forwarder_beat
            )
        )
        self._replay_target = await self.room_log.last_seq()
        if self._replay_target <= self.applied_seq:
            self._mark_caught_up()
        self._spawn(self._follow_log())
        self._spawn(self._count_ticker())
        self._spawn(self.checkpoints.run())
        self._spawn(self._watch_peers())

    async def wait_caught_up(self) -> None:
        """Wait until the log as it stood at start has been folded (recovery is done)."""
        await self._caught_up.wait()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, *, last_snapshot: bool = True) -> None:
        """Stop consuming, write a last snapshot (unless told not to: a lost lease), cancel
        timers. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.timers.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:  # never block shutdown on one; say which it was
                log.error("statekeeper task %s did not stop: %s", task.get_coro(), task.get_stack())
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._outbox.clear()
        if not last_snapshot:
            log.info("statekeeper tasks stopped; no last snapshot (the lease is lost)")
            return
        log.info("statekeeper tasks stopped; writing the last snapshot")
        # The last snapshot only shortens the next start (the log is the truth): bounded.
        final = asyncio.create_task(self.checkpoint())
        _finished, unfinished = await asyncio.wait([final], timeout=STOP_TIMEOUT_S)
        if unfinished:
            log.error("the last snapshot did not finish in time: %s", final.get_stack())
            final.cancel()
        elif final.exception() is not None:
            log.error("the last snapshot failed: %r", final.exception())

    # ----------------------------------------------------------------------- the log

    async def _follow_log(self) -> None:
        """Follow the log for ever; if NATS stays away too long, reopen and go on."""
        while True:
            try:
                await self._follow_log_once()
            except asyncio.CancelledError:
                raise
            except LeaseLost:
                return  # nothing more for this partition here; its holder stops us
            except Exception:
                self._healthy = False
                log.exception("the room log reader failed; reopening from %d", self.applied_seq + 1)
                await asyncio.sleep(1.0)

    async def _follow_log_once(self) -> None:
        start = self.applied_seq + 1
        async with self.room_log.reader(self.partitions, start) as reader:
            self._healthy = True
            self.log_reader = reader if isinstance(reader, LogReader) else None
            try:
                await self._fold_from(reader)
            finally:
                self.log_reader = None

    async def _fold_from(self, reader: LogReaderPort) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = 0.05
            paced = self._caught_up.is_set()  # a replay's empty batch means "caught up"
            if paced and self._outbox:  # held back by the gap: come back when it may go
                wait = min(wait, max(0.0, self._outbox_due - loop.time()))
            batch = await reader.next_batch(max_wait=wait)
            if not batch:
                self._mark_caught_up()  # nothing more stored: recovery is done
                if self._outbox:
                    await self._send_outbox()
                continue
            share = self.fence is not None  # leases must be renewed meanwhile
            fold = self.fold
            for i, (seq, event, _data, stored_at) in enumerate(batch, 1):
                if event is not None:
                    fold(seq, event, stored_at)
                if seq > self.applied_seq:
                    self.applied_seq = seq
                if share and not i % YIELD_EVERY:
                    await asyncio.sleep(0)  # the state is whole at applied_seq here
            if self._caught_up.is_set():
                self.media.flush(self.state, self.applied_seq)
            elif self.applied_seq >= self._replay_target:
                self._mark_caught_up()
            if self._outbox and (
                not paced
                or self.checkpoints.flush_due  # before a commit: replies never wait on SQL
                or self.checkpoints.checkpoint_due
                or loop.time() >= self._outbox_due
            ):
                await self._send_outbox()
            if self.checkpoints.flush_due:
                await self.checkpoints.persist_or_wait(self.flush)
            if self.checkpoints.checkpoint_due:
                await self.checkpoints.persist_or_wait(self.checkpoint)

    def _mark_caught_up(self) -> None:
        """Recovery is done: from now on media changes go out, starting with a full sync."""
        if self._caught_up.is_set():
            return
        self._caught_up.set()
        self.media.sync_all(self.state, self.applied_seq)
        pace_reads(self.nc, self.tuning.read_gap_ms / 1000)  # not the replay's reads

    def fold(self, seq: int, event: LogEvent, stored_at: int = 0) -> None:
        """Fold one event and carry out its outcomes (skipping what a snapshot holds).

        `stored_at` is when JetStream stored it (the fold refuses late actions)."""
        room = self.state.rooms.get(event.room_id)
        if room is not None and seq <= room.last_seq:
            return
        self.events_folded += 1
        self.checkpoints.event_folded()
        handlers = self._handlers
        for outcome in apply(self.state, seq, event, stored_at):
            handler = handlers.get(type(outcome))
            if handler is not None:
                handler(outcome, seq)
        self.checkpoints.room_changed(event.room_id)

    def _outcome_handlers(self) -> dict[type, Callable[[Any, int], None]]:
        """How each outcome is carried out: one handler per outcome class (final Structs),
        looked up by type, called with the outcome and the log sequence that caused it."""
        roster = self._roster
        return {
            Broadcast: self._broadcast,
            Direct: self._direct,
            RosterJoin: roster,
            RosterLeave: roster,
            RosterUpdate: roster,
            CountsMoved: self._counts_moved,
            PublicEvent: self._public_event,
            TimerDue: self._timer_due,
            MediaChanged: self._media_changed,
            RevocationsChanged: self._revocations_changed,
            RoomEnded: self._room_ended,
        }

    def _broadcast(self, outcome: Broadcast, _seq: int) -> None:
        subject = (
            subjects.room_speakers(outcome.room_id)
            if outcome.channel == "speakers"
            else subjects.room_mod(outcome.room_id)
        )
        self._outbox.append((subject, encode(outcome.message)))

    def _direct(self, outcome: Direct, seq: int) -> None:
        frame = encode(outcome.message)
        self._outbox.append((outcome.subject, frame))
        if outcome.answers and type(outcome.message) is not JoinAccepted:
            # kept for an edge that missed it (a socket's ack or error, a server API call's
            # answer); a join's answer is per viewer and large, and its client joins again
            self.recent.kept(seq, outcome.subject, frame)

    def _roster(self, outcome: RosterJoin | RosterLeave | RosterUpdate, _seq: int) -> None:
        self.checkpoints.roster(outcome)

    def _counts_moved(self, outcome: CountsMoved, _seq: int) -> None:
        self.counts.moved(outcome.room_id)

    def _public_event(self, outcome: PublicEvent, _seq: int) -> None:
        self.checkpoints.public(outcome)

    def _timer_due(self, outcome: TimerDue, _seq: int) -> None:
        self.timers.arm(outcome.event)

    def _media_changed(self, outcome: MediaChanged, _seq: int) -> None:
        if not outcome.forwarder:
            self.placement.place_subscriber(outcome.room_id, outcome.sid)
        elif self._caught_up.is_set():
            self.media.changed(outcome)
        self.placement.folded(outcome)

    def _revocations_changed(self, _outcome: RevocationsChanged, _seq: int) -> None:
        self.checkpoints.revocations_changed()

    def _room_ended(self, outcome: RoomEnded, seq: int) -> None:
        self.counts.ended(outcome.room_id)
        self.checkpoints.room_ended(outcome.room_id, seq)

    def _publish(self, subject: str, data: bytes) -> None:
        self._outbox.append((subject, data))

    async def _send_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        if outbox:
            self._outbox_due = asyncio.get_running_loop().time() + self.tuning.outbox_gap_ms / 1000
        if self.fence is not None and outbox:
            try:
                self.fence.check()
            except LeaseLost:
                log.warning("lease lost: %d outcomes not published", len(outbox))
                raise
        await publish_all(self.nc, [(subject, "", data, None) for subject, data in outbox])

    # ----------------------------------------------------------------------- the parts

    async def _count_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.count_tick_ms / 1000)
            self.publish_due_counts()
            try:
                await self._send_outbox()
            except LeaseLost:
                return

    def publish_due_counts(self) -> None:
        """Publish the counts whose coalescing window is open (see `CountPublisher`)."""
        self.counts.publish_due(self.state, self.clock())

    async def _watch_peers(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.edge_check_ms / 1000)
            if self.liveness.may_judge(self.tuning.edge_timeout_ms):
                self.liveness.check_edges()
            if self.liveness.may_judge(self.tuning.forwarder_timeout_ms):
                self.placement.check_forwarders()

    @property
    def caught_up(self) -> bool:
        """True once recovery has folded the log as it stood at start, while its log reader
        and its NATS link are up."""
        return self._caught_up.is_set() and self._healthy and self.nc.is_connected

    @property
    def flushed_seq(self) -> int:
        """The last log sequence whose roster changes are in SQL."""
        return self.checkpoints.flushed_seq

    @property
    def liveness_skipped(self) -> int:
        """Liveness checks skipped because this statekeeper's own link was down or new."""
        return self.liveness.skipped

    async def flush(self, at_cut: Callable[[], None] | None = None) -> int:
        """Write pending roster rows and public events; return the sequence now in SQL
        (see `Checkpoints.flush`)."""
        return await self.checkpoints.flush(at_cut)

    async def checkpoint(self) -> int:
        """Write roster rows, snapshots of changed rooms and the checkpoint, in one transaction."""
        return await self.checkpoints.checkpoint()

    def assign_media(self, request: MediaAssignRequest) -> MediaAssignment:
        """The forwarder for a session's media (see `Placement.assign_media`)."""
        return self.placement.assign_media(request)
