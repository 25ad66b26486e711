"""The statekeeper's shell: reads the room log, folds it, and carries out the outcomes.

One `Statekeeper` owns the log partitions it is given. On start it loads the last
snapshots and replays the log from the checkpoint + 1 (skipping, per room, what its
snapshot already holds); then it follows the live log. Outcomes go out as they are
decided: broadcasts and direct replies on core NATS, public events on the durable events
stream, roster rows and snapshots to SQL, timers back into the log, counts through the
coalescer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import subjects
from schemas.api import EdgeGone, EdgeHeartbeat, MediaAssignment, MediaAssignRequest
from schemas.client import CountsChanged
from schemas.codec import SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.log import EdgeLost, ForwarderAssigned, GraceExpired, LogEvent, RoomTimedOut
from schemas.media import ForwarderHeartbeat
from schemas.models import Counts
from stagecast.natslink import NatsLink
from statekeeper.batches import BatchWriter
from statekeeper.coalescer import CountCoalescer
from statekeeper.cursor import CURSOR_LIFETIME_MS
from statekeeper.errors import MediaRefused, NoForwarder
from statekeeper.fold import apply
from statekeeper.media import ForwarderTable, MediaPlanner, sessions_on
from statekeeper.outcomes import (
    Broadcast,
    CountsMoved,
    Direct,
    MediaChanged,
    Outcome,
    PublicEvent,
    RevocationsChanged,
    RoomEnded,
    RosterJoin,
    RosterLeave,
    RosterUpdate,
    TimerDue,
)
from statekeeper.persistence import Deletion, PersistenceHealth, Snapshot
from statekeeper.roomlog import RoomLog
from statekeeper.state import Room, State, pack_revocations, pack_room, restore, revocations_key
from statekeeper.store import Store

log = logging.getLogger("stagecast.statekeeper")

RosterOp = RosterJoin | RosterLeave | RosterUpdate
STOP_TIMEOUT_S = 5.0
"""How long `stop` waits for its tasks to end after cancelling them."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(slots=True)
class Tuning:
    """How often the statekeeper writes and checks things (tests shorten these)."""

    roster_flush_ms: int = 100
    roster_flush_ops: int = 5_000
    snapshot_every_ms: int = 5_000
    snapshot_every_events: int = 50_000
    count_tick_ms: int = 25
    edge_check_ms: int = 1_000
    edge_timeout_ms: int = 4_000
    forwarder_timeout_ms: int = 3_000
    prune_every_ms: int = 60_000


class Statekeeper:
    """Folds the room log of its partitions and serves what it knows."""

    def __init__(
        self,
        nc: NATS,
        room_log: RoomLog,
        store: Store,
        *,
        partitions: tuple[int, ...] = (0,),
        tuning: Tuning | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.nc = nc
        self.room_log = room_log
        self.store = store
        self.partitions = partitions
        self.tuning = tuning or Tuning()
        self.clock = clock
        self.state = State()
        self.applied_seq = 0
        """The last log sequence folded."""
        self.flushed_seq = 0
        """The last log sequence whose roster changes are in SQL."""
        self.events_folded = 0
        self.coalescer = CountCoalescer()
        self._sent_counts: dict[str, Counts] = {}
        self._roster: list[RosterOp] = []
        self._public: list[PublicEvent] = []
        self._dirty: set[str] = set()
        self._deleted: dict[str, int] = {}
        self._revocations_dirty = False
        """The revoked token ids changed since the last snapshot."""
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._edges_seen: dict[str, int] = {}
        self._lost_edges: set[str] = set()
        self._commit_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Any] = []
        self._events_since_snapshot = 0
        self._last_snapshot_at = 0
        self._caught_up = asyncio.Event()
        self._stopped = False
        self._outbox: list[tuple[str, bytes]] = []
        self._replay_target = 0
        self._healthy = True
        self.forwarders = ForwarderTable(self.tuning.forwarder_timeout_ms)
        self.media = MediaPlanner(self._publish)
        self._placing: dict[tuple[str, str], str] = {}
        self._forwarder_lost = True
        """Some session may sit on a dead forwarder (`_check_forwarders` looks)."""
        self._link_up_at: int | None = None
        """When this statekeeper's own NATS link was last seen coming up (None: down)."""
        self.link: NatsLink | None = None
        """The NATS link's state and counters, when the wiring tracks it (`main`)."""
        self.liveness_skipped = 0
        """Liveness checks skipped because this statekeeper's own link was down or new."""
        """Forwarder assignments appended to the log but not folded yet."""
        self.persistence = PersistenceHealth()
        """Persistence counters, state and the items set aside (docs/configuration.md)."""
        self.writer = BatchWriter(room_log, store, self.persistence, clock)

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Recover from the last snapshot, then follow the log."""
        checkpoint, snapshots = await self.store.load()
        self.state = restore(snapshots, self.partitions)
        self.applied_seq = self.flushed_seq = checkpoint
        self._last_snapshot_at = self.clock()
        now = self.clock()
        for room in self.state.rooms.values():
            self._rearm(room)
            for edge_id in room.by_edge:
                self._edges_seen.setdefault(edge_id, now)
        self._subs.append(await self.nc.subscribe(subjects.EDGE_HEARTBEAT, cb=self._on_heartbeat))
        self._subs.append(
            await self.nc.subscribe(subjects.FORWARDER_HEARTBEAT, cb=self._on_forwarder_beat)
        )
        info = await self.room_log.js.stream_info(subjects.LOG_STREAM)
        self._replay_target = int(info.state.last_seq)
        if self._replay_target <= self.applied_seq:
            self._mark_caught_up()
        self._link_up_at = now if self.nc.is_connected else None
        self._spawn(self._follow_log(), self._count_ticker(), self._flusher(), self._edge_watch())

    async def wait_caught_up(self) -> None:
        """Wait until the log as it stood at start has been folded (recovery is done)."""
        await self._caught_up.wait()

    def _spawn(self, *coros: Any) -> None:
        for coro in coros:
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop consuming, write a last snapshot, cancel timers. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:  # never block shutdown on one; say which it was
                log.error("statekeeper task %s did not stop: %s", task.get_coro(), task.get_stack())
        log.info("statekeeper tasks stopped; writing the last snapshot")
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
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
            except Exception:
                self._healthy = False
                log.exception("the room log reader failed; reopening from %d", self.applied_seq + 1)
                await asyncio.sleep(1.0)

    async def _follow_log_once(self) -> None:
        start = self.applied_seq + 1
        async with self.room_log.reader(self.partitions, start) as reader:
            self._healthy = True
            while True:
                batch = await reader.next_batch(max_wait=0.05)
                if not batch:
                    self._mark_caught_up()  # nothing more stored: recovery is done
                    if self._outbox:
                        await self._send_outbox()
                    continue
                for record in batch:
                    if record.event is not None:
                        self.fold(record.seq, record.event, record.stored_at)
                    self.applied_seq = max(self.applied_seq, record.seq)
                if self._caught_up.is_set():
                    self.media.flush(self.state, self.applied_seq)
                elif self.applied_seq >= self._replay_target:
                    self._mark_caught_up()
                if self._outbox:
                    await self._send_outbox()
                if len(self._roster) >= self.tuning.roster_flush_ops:
                    await self._persist_or_wait(self.flush)
                if self._events_since_snapshot >= self.tuning.snapshot_every_events:
                    await self._persist_or_wait(self.checkpoint)

    def _mark_caught_up(self) -> None:
        """Recovery is done: from now on media changes go out, starting with a full sync."""
        if self._caught_up.is_set():
            return
        self._caught_up.set()
        self.media.sync_all(self.state, self.applied_seq)

    def fold(self, seq: int, event: LogEvent, stored_at: int = 0) -> None:
        """Fold one event and carry out its outcomes (skipping what a snapshot holds).

        `stored_at` is when JetStream stored it (the fold refuses late actions)."""
        room = self.state.rooms.get(event.room_id)
        if room is not None and seq <= room.last_seq:
            return
        self.events_folded += 1
        self._events_since_snapshot += 1
        for outcome in apply(self.state, seq, event, stored_at):
            self._carry_out(outcome, seq)
        self._dirty.add(event.room_id)

    def _carry_out(self, outcome: Outcome, seq: int) -> None:
        if isinstance(outcome, Broadcast):
            subject = (
                subjects.room_speakers(outcome.room_id)
                if outcome.channel == "speakers"
                else subjects.room_mod(outcome.room_id)
            )
            self._publish(subject, encode(outcome.message))
        elif isinstance(outcome, Direct):
            self._publish(outcome.subject, encode(outcome.message))
        elif isinstance(outcome, (RosterJoin, RosterLeave, RosterUpdate)):
            self._roster.append(outcome)
        elif isinstance(outcome, CountsMoved):
            self.coalescer.moved(outcome.room_id)
        elif isinstance(outcome, PublicEvent):
            self._public.append(outcome)
        elif isinstance(outcome, TimerDue):
            self._arm(outcome.event)
        elif isinstance(outcome, MediaChanged):
            if not outcome.forwarder:
                self._place_subscriber(outcome.room_id, outcome.sid)
            elif self._caught_up.is_set():
                self.media.changed(outcome)
            key = (outcome.room_id, outcome.sid)
            if self._placing.get(key) == outcome.forwarder:
                del self._placing[key]  # folded: the state holds it now
        elif isinstance(outcome, RevocationsChanged):
            self._revocations_dirty = True
        elif isinstance(outcome, RoomEnded):
            self.coalescer.drop(outcome.room_id)
            self._sent_counts.pop(outcome.room_id, None)
            self._deleted[outcome.room_id] = seq
            self._dirty.discard(outcome.room_id)

    def _publish(self, subject: str, data: bytes) -> None:
        self._outbox.append((subject, data))

    async def _send_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        for subject, data in outbox:
            await self.nc.publish(subject, data)

    # ----------------------------------------------------------------------- timers

    def _arm(self, event: LogEvent) -> None:
        key = _timer_key(event)
        if key in self._timers:
            return
        delay = max(0.0, (event.at - self.clock()) / 1000)
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key, event)

    def _fire(self, key: str, event: LogEvent) -> None:
        self._timers.pop(key, None)
        if not self._stopped:
            self._spawn(self._append_timer(key, event))

    async def _append_timer(self, key: str, event: LogEvent) -> None:
        for attempt in range(10):
            try:
                await self.room_log.append(event, msg_id=key)
                return
            except Exception as exc:  # NATS down: retry with backoff, bounded
                log.warning("timer %s not appended (%s), retrying", key, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))

    def _rearm(self, room: Room) -> None:
        """After recovery, arm the timers the state implies (their keys dedup the log)."""
        for session in room.sessions.values():
            if not session.connected:
                due = room.departure_timeout * 1000 + session.disconnected_at
                self._arm(
                    GraceExpired(
                        room_id=room.id,
                        at=due,
                        sid=session.sid,
                        disconnected_at=session.disconnected_at,
                    )
                )
        if not room.sessions and room.empty_since:
            self._arm(
                RoomTimedOut(
                    room_id=room.id,
                    at=room.closes_at,
                    room_sid=room.sid,
                    empty_since=room.empty_since,
                )
            )

    # ----------------------------------------------------------------------- counts

    async def _count_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.count_tick_ms / 1000)
            self.publish_due_counts()
            await self._send_outbox()

    def publish_due_counts(self) -> None:
        for room_id in self.coalescer.due(self.clock()):
            room = self.state.rooms.get(room_id)
            if room is None:
                continue
            counts = room.counts()
            if self._sent_counts.get(room_id) == counts:
                continue  # it changed and changed back within the window
            self._sent_counts[room_id] = counts
            message = CountsChanged(seq=room.last_seq, counts=counts)
            self._publish(subjects.room_counts(room_id), encode(message))

    # ----------------------------------------------------------------------- persistence

    async def _flusher(self) -> None:
        last_prune = self.clock()
        delay = self.tuning.roster_flush_ms / 1000
        while True:
            await asyncio.sleep(delay)
            try:
                now = self.clock()
                if now - self._last_snapshot_at >= self.tuning.snapshot_every_ms and self._dirty:
                    await self.checkpoint()
                else:
                    await self.flush()
                if now - last_prune >= self.tuning.prune_every_ms:
                    last_prune = now
                    await self.store.prune(left_before_ms=now - CURSOR_LIFETIME_MS - 60_000)
            except Exception as exc:  # an outage: everything is kept; back off, quietly
                delay = self.persistence.failed(exc, time.monotonic())
            else:
                self.persistence.succeeded(time.monotonic())
                delay = self.tuning.roster_flush_ms / 1000

    async def _persist_or_wait(self, write: Callable[[], Any]) -> None:
        """Write now; while persisting fails, back off and retry (the log waits meanwhile,
        so what is pending stays bounded)."""
        while True:
            try:
                await write()
            except Exception as exc:
                await asyncio.sleep(self.persistence.failed(exc, time.monotonic()))
            else:
                self.persistence.succeeded(time.monotonic())
                return

    @property
    def caught_up(self) -> bool:
        """True once recovery has folded the log as it stood at start, while its log reader
        and its NATS link are up."""
        return self._caught_up.is_set() and self._healthy and self.nc.is_connected

    async def flush(self, at_cut: Callable[[], None] | None = None) -> int:
        """Write pending roster rows and public events; return the sequence now in SQL.

        `at_cut` runs at the instant the batch is cut, when the state is exactly at the
        returned sequence (a pagination snapshot reads its totals there).
        """
        return await asyncio.shield(self._locked_commit(with_snapshots=False, at_cut=at_cut))

    async def checkpoint(self) -> int:
        """Write roster rows, snapshots of changed rooms and the checkpoint, in one transaction."""
        return await asyncio.shield(self._locked_commit(with_snapshots=True))

    async def _locked_commit(
        self, *, with_snapshots: bool, at_cut: Callable[[], None] | None = None
    ) -> int:
        # Shielded by the callers: a commit, once begun, runs to its end even when the task
        # that asked for it is cancelled (a transaction cut in half would hold SQLite's
        # write lock, and the last snapshot at shutdown would wait on it for ever).
        async with self._commit_lock:
            return await self._commit(with_snapshots=with_snapshots, at_cut=at_cut)

    async def _commit(
        self, *, with_snapshots: bool, at_cut: Callable[[], None] | None = None
    ) -> int:
        roster, self._roster = self._roster, []
        public, self._public = self._public, []
        seq = self.applied_seq
        if at_cut is not None:
            at_cut()
        snapshots: dict[str, tuple[int, bytes]] | None = None
        deleted: dict[str, int] = {}
        if with_snapshots:
            snapshots = {
                room_id: (self.state.rooms[room_id].last_seq, pack_room(self.state.rooms[room_id]))
                for room_id in sorted(self._dirty)
                if room_id in self.state.rooms
            }
            if self._revocations_dirty:
                # Beside the rooms, under a key no room id can be: restored by `restore`.
                revoked = pack_revocations(self.state.revoked)
                snapshots[revocations_key(self.partitions)] = (seq, revoked)
                self._revocations_dirty = False
            deleted, self._deleted = self._deleted, {}
            self._dirty.clear()
            self._events_since_snapshot = 0
            self._last_snapshot_at = self.clock()
        try:
            await self.writer.write(
                [
                    *public,
                    *roster,
                    *(Snapshot(r, at, blob) for r, (at, blob) in (snapshots or {}).items()),
                    *(Deletion(r, at) for r, at in deleted.items()),
                ],
                seq,
                with_snapshots,
            )
        except BaseException:
            self._roster[:0] = roster  # keep them for the next attempt, in order
            self._public[:0] = public
            if snapshots is not None:
                key = revocations_key(self.partitions)
                self._revocations_dirty |= key in snapshots
                self._dirty.update(snapshots)
                self._dirty.discard(key)
                for room_id, at_seq in deleted.items():
                    self._deleted.setdefault(room_id, at_seq)
            raise
        self.flushed_seq = max(self.flushed_seq, seq)
        return seq

    # ----------------------------------------------------------------------- edges

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        if isinstance(beat, EdgeHeartbeat):
            self._edges_seen[beat.edge_id] = self.clock()
            self._lost_edges.discard(beat.edge_id)
        elif isinstance(beat, EdgeGone):
            self._edges_seen[beat.edge_id] = 0
            await self._check_edges(only=beat.edge_id)  # the others are judged on the clock

    async def _edge_watch(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.edge_check_ms / 1000)
            if self._may_judge(self.tuning.edge_timeout_ms):
                await self._check_edges()
            if self._may_judge(self.tuning.forwarder_timeout_ms):
                self._check_forwarders()

    def _may_judge(self, timeout_ms: int) -> bool:
        """Whether silence from a peer means anything: only while this statekeeper's own
        NATS link is up, and has been for a whole `timeout_ms` (so every live peer has had
        the time to beat since). Judged while it is down, every edge would look lost."""
        now = self.clock()
        if not self.nc.is_connected:
            self._link_up_at = None
        elif self._link_up_at is None:
            self._link_up_at = now
        if self._link_up_at is not None and now - self._link_up_at >= timeout_ms:
            return True
        self.liveness_skipped += 1
        return False

    # ----------------------------------------------------------------------- media

    async def _on_forwarder_beat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        if isinstance(beat, ForwarderHeartbeat):
            self.forwarders.beat(beat, self.clock())
            if beat.stopping:
                self._forwarder_lost = True
                self._check_forwarders()

    def _check_forwarders(self) -> None:
        """Move the sessions of forwarders that stopped beating to live ones.

        The sessions are scanned only when a forwarder may have gone: at start (a restarted
        statekeeper may hold placements on a forwarder that is long dead), when one expired
        or said it is stopping, and again while no live forwarder could take them.
        """
        now = self.clock()
        if self.forwarders.expire(now):
            self._forwarder_lost = True
        if not (self._forwarder_lost and self._caught_up.is_set()):
            return
        if self.forwarders.least_loaded(now) is None:
            return  # nowhere to move them yet: try again at the next check
        self._forwarder_lost = False
        placed = {s.forwarder for room in self.state.rooms.values() for s in room.sessions.values()}
        for forwarder_id in sorted(placed - {""}):
            if self.forwarders.is_live(forwarder_id, now):
                continue
            moved = [
                key for key in sessions_on(self.state, forwarder_id) if key not in self._placing
            ]
            log.warning("forwarder %s is gone; moving its %d sessions", forwarder_id, len(moved))
            for room_id, sid in moved:
                self._place(room_id, sid, now)

    def assign_media(self, request: MediaAssignRequest) -> MediaAssignment:
        """The forwarder for a session's media: its own if live, else a new least-loaded one
        (logged as `ForwarderAssigned`). Checks an announced `track_sid` on the way."""
        room = self.state.rooms.get(request.room_id)
        session = room.sessions.get(request.sid) if room is not None else None
        if session is None:
            raise MediaRefused(ErrorCode.NOT_JOINED, "no such session in this room")
        kind = None
        if request.track_sid is not None:
            track = session.tracks.get(request.track_sid)
            if session.is_viewer or not session.grant.can_publish:
                raise MediaRefused(
                    ErrorCode.INVALID_PERMISSIONS, "this participant may not publish"
                )
            if track is None:
                raise MediaRefused(
                    ErrorCode.TRACK_NOT_FOUND,
                    f"no announced track {request.track_sid!r}: send publish_track first",
                )
            kind = track.kind
        now = self.clock()
        current = self._placing.get((request.room_id, session.sid), session.forwarder)
        if current and self.forwarders.is_live(current, now):
            return MediaAssignment(forwarder_id=current, kind=kind)
        return MediaAssignment(
            forwarder_id=self._place(request.room_id, session.sid, now), kind=kind
        )

    def _place_subscriber(self, room_id: str, sid: str) -> None:
        """A session subscribed before it had a forwarder: give it one, if any is live."""
        if not self._caught_up.is_set() or (room_id, sid) in self._placing:
            return
        try:
            self._place(room_id, sid, self.clock())
        except NoForwarder:
            log.debug("no forwarder for subscriber %s yet", sid)

    def _place(self, room_id: str, sid: str, now: int) -> str:
        forwarder_id = self.forwarders.least_loaded(now)
        if forwarder_id is None:
            raise NoForwarder()
        self.forwarders.assigned(forwarder_id)
        self._placing[(room_id, sid)] = forwarder_id
        event = ForwarderAssigned(room_id=room_id, at=now, sid=sid, forwarder_id=forwarder_id)
        self._spawn(self._append_timer(f"forwarder:{room_id}:{sid}:{forwarder_id}:{now}", event))
        return forwarder_id

    async def _check_edges(self, only: str | None = None) -> None:
        now = self.clock()
        for edge_id, seen in list(self._edges_seen.items()):
            if only is not None and edge_id != only:
                continue
            if now - seen < self.tuning.edge_timeout_ms or edge_id in self._lost_edges:
                continue
            self._lost_edges.add(edge_id)
            log.warning("edge %s stopped heart-beating; its sessions enter the grace", edge_id)
            for room in list(self.state.rooms.values()):
                if edge_id in room.by_edge:
                    event = EdgeLost(room_id=room.id, at=now, edge_id=edge_id)
                    self._spawn(self._append_timer(f"edge-lost:{edge_id}:{room.id}:{seen}", event))


def _timer_key(event: LogEvent) -> str:
    if isinstance(event, GraceExpired):
        return f"grace:{event.room_id}:{event.sid}:{event.disconnected_at}"
    if isinstance(event, RoomTimedOut):
        return f"room-timeout:{event.room_id}:{event.room_sid}:{event.empty_since}"
    return f"timer:{event.TYPE}:{event.room_id}:{event.at}"
