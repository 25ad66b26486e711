"""What the fold decided that SQL does not hold yet, and the commits that write it.

Roster rows and public events wait here until a flush (every `roster_flush_ms`, or
sooner when `roster_flush_ops` pile up); a checkpoint also snapshots the rooms changed
since the last one and moves the checkpoint. A failed commit keeps everything, in order,
for the next attempt; while persisting fails the log reader waits (`persist_or_wait`), so
what is pending stays bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from statekeeper.batches import BatchWriter
from statekeeper.cursor import CURSOR_LIFETIME_MS
from statekeeper.outcomes import PublicEvent, RosterJoin, RosterLeave, RosterUpdate
from statekeeper.persistence import Deletion, PersistenceHealth, Snapshot
from statekeeper.snapshots import pack_revocations, pack_room, revocations_key
from statekeeper.state import State
from statekeeper.store import Store

RosterOp = RosterJoin | RosterLeave | RosterUpdate


class Cadence(Protocol):
    """The persistence settings of `statekeeper.service.Tuning`."""

    roster_flush_ms: int
    roster_flush_ops: int
    snapshot_every_ms: int
    snapshot_every_events: int
    prune_every_ms: int


class Checkpoints:
    """Pending roster rows, public events and changed rooms, and their commits."""

    def __init__(
        self,
        *,
        store: Store,
        writer: BatchWriter,
        health: PersistenceHealth,
        cadence: Cadence,
        clock: Callable[[], int],
        partitions: tuple[int, ...],
        state: Callable[[], State],
        applied_seq: Callable[[], int],
    ) -> None:
        self._store = store
        self._writer = writer
        self._health = health
        self._cadence = cadence
        self._clock = clock
        self._partitions = partitions
        self._state = state
        self._applied_seq = applied_seq
        self.flushed_seq = 0
        """The last log sequence whose roster changes are in SQL."""
        self._roster: list[RosterOp] = []
        self._public: list[PublicEvent] = []
        self._dirty: set[str] = set()
        self._deleted: dict[str, int] = {}
        self._revocations_dirty = False
        """The revoked token ids changed since the last snapshot."""
        self._events_since_snapshot = 0
        self._last_snapshot_at = 0
        self._lock = asyncio.Lock()

    # ----------------------------------------------------------------------- what waits

    def started(self, checkpoint: int) -> None:
        """Recovery loaded the snapshots of `checkpoint`: SQL holds everything up to it."""
        self.flushed_seq = checkpoint
        self._last_snapshot_at = self._clock()

    def event_folded(self) -> None:
        """One more event since the last snapshot."""
        self._events_since_snapshot += 1

    def room_changed(self, room_id: str) -> None:
        """The room's state changed: snapshot it at the next checkpoint."""
        self._dirty.add(room_id)

    def room_ended(self, room_id: str, seq: int) -> None:
        """The room closed at `seq`: drop what SQL holds of it, up to `seq`."""
        self._deleted[room_id] = seq
        self._dirty.discard(room_id)

    def revocations_changed(self) -> None:
        """The revoked token ids changed: snapshot them at the next checkpoint."""
        self._revocations_dirty = True

    def roster(self, op: RosterOp) -> None:
        """A roster row to write at the next flush."""
        self._roster.append(op)

    def public(self, event: PublicEvent) -> None:
        """A public event to append at the next flush."""
        self._public.append(event)

    @property
    def flush_due(self) -> bool:
        """So many roster rows wait that the log reader should flush before going on."""
        return len(self._roster) >= self._cadence.roster_flush_ops

    @property
    def checkpoint_due(self) -> bool:
        """So many events were folded since the last snapshot that one is due now."""
        return self._events_since_snapshot >= self._cadence.snapshot_every_events

    # ----------------------------------------------------------------------- commits

    async def run(self) -> None:
        """Flush on the clock, checkpoint when due, prune departed rows; for ever."""
        last_prune = self._clock()
        delay = self._cadence.roster_flush_ms / 1000
        while True:
            await asyncio.sleep(delay)
            try:
                now = self._clock()
                due = now - self._last_snapshot_at >= self._cadence.snapshot_every_ms
                if due and self._dirty:
                    await self.checkpoint()
                else:
                    await self.flush()
                if now - last_prune >= self._cadence.prune_every_ms:
                    last_prune = now
                    await self._store.prune(left_before_ms=now - CURSOR_LIFETIME_MS - 60_000)
            except Exception as exc:  # an outage: everything is kept; back off, quietly
                delay = self._health.failed(exc, time.monotonic())
            else:
                self._health.succeeded(time.monotonic())
                delay = self._cadence.roster_flush_ms / 1000

    async def persist_or_wait(self, write: Callable[[], Any]) -> None:
        """Write now; while persisting fails, back off and retry (the log waits meanwhile,
        so what is pending stays bounded)."""
        while True:
            try:
                await write()
            except Exception as exc:
                await asyncio.sleep(self._health.failed(exc, time.monotonic()))
            else:
                self._health.succeeded(time.monotonic())
                return

    async def flush(self, at_cut: Callable[[], None] | None = None) -> int:
        """Write pending roster rows and public events; return the sequence now in SQL.

        `at_cut` runs at the instant the batch is cut, when the state is exactly at the
        returned sequence (a pagination snapshot reads its totals there).
        """
        return await _shielded(self._locked_commit(with_snapshots=False, at_cut=at_cut))

    async def checkpoint(self) -> int:
        """Write roster rows, snapshots of changed rooms and the checkpoint, in one transaction."""
        return await _shielded(self._locked_commit(with_snapshots=True))

    async def _locked_commit(
        self, *, with_snapshots: bool, at_cut: Callable[[], None] | None = None
    ) -> int:
        # Shielded by the callers: a commit, once begun, runs to its end even when the task
        # that asked for it is cancelled (a transaction cut in half would hold SQLite's
        # write lock, and the last snapshot at shutdown would wait on it for ever).
        async with self._lock:
            return await self._commit(with_snapshots=with_snapshots, at_cut=at_cut)

    async def _commit(
        self, *, with_snapshots: bool, at_cut: Callable[[], None] | None = None
    ) -> int:
        roster, self._roster = self._roster, []
        public, self._public = self._public, []
        seq = self._applied_seq()
        if at_cut is not None:
            at_cut()
        snapshots: dict[str, tuple[int, bytes]] | None = None
        deleted: dict[str, int] = {}
        if with_snapshots:
            rooms = self._state().rooms
            snapshots = {
                room_id: (rooms[room_id].last_seq, pack_room(rooms[room_id]))
                for room_id in sorted(self._dirty)
                if room_id in rooms
            }
            if self._revocations_dirty:
                # Beside the rooms, under a key no room id can be: restored by `restore`.
                revoked = pack_revocations(self._state().revoked)
                snapshots[revocations_key(self._partitions)] = (seq, revoked)
                self._revocations_dirty = False
            deleted, self._deleted = self._deleted, {}
            self._dirty.clear()
            self._events_since_snapshot = 0
            self._last_snapshot_at = self._clock()
        try:
            await self._writer.write(
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
                key = revocations_key(self._partitions)
                self._revocations_dirty |= key in snapshots
                self._dirty.update(snapshots)
                self._dirty.discard(key)
                for room_id, at_seq in deleted.items():
                    self._deleted.setdefault(room_id, at_seq)
            raise
        self.flushed_seq = max(self.flushed_seq, seq)
        return seq


async def _shielded(commit: Coroutine[Any, Any, int]) -> int:
    """Run `commit` to its end even if the caller is cancelled; an error it ends with
    after the caller has gone is retrieved (the batch is kept and retried anyway)."""
    task = asyncio.ensure_future(commit)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


def _retrieve(task: asyncio.Future[int]) -> None:
    if not task.cancelled():
        task.exception()
