"""The in-memory `Store`: the twin of `SqlStore` for unit tests of pure cores."""

from __future__ import annotations

import bisect
import dataclasses

from schemas.codec import pack_struct
from statekeeper.outcomes import RosterJoin, RosterLeave, RosterUpdate
from statekeeper.persistence import PoisonedItem
from statekeeper.rosters import Batch, CheckedStore, RowKey, tier_rank


@dataclasses.dataclass(slots=True)
class _Row:
    sid: str
    info: bytes
    left_seq: int | None = None
    left_at: int | None = None

    def visible(self, since_seq: int, snapshot_seq: int) -> bool:
        return since_seq <= snapshot_seq and (self.left_seq is None or self.left_seq > snapshot_seq)


@dataclasses.dataclass(slots=True)
class _RoomRoster:
    rows: dict[RowKey, _Row] = dataclasses.field(default_factory=dict)
    seqs: tuple[list[int], list[int]] = dataclasses.field(default_factory=lambda: ([], []))
    by_session: dict[tuple[str, int], list[_Row]] = dataclasses.field(default_factory=dict)

    def add(self, key: RowKey, row: _Row) -> None:
        self.rows[key] = row
        bisect.insort(self.seqs[key[0]], key[1])
        self.by_session.setdefault((row.sid, key[1]), []).append(row)


class _MemoryTables:
    """Roster ops apply one by one, in order: the reference `SqlStore`'s bulk plan must match."""

    def __init__(self) -> None:
        self._rooms: dict[str, _RoomRoster] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._applied_seq = 0
        self._set_aside: list[PoisonedItem] = []

    async def write(self, batch: Batch) -> None:
        for op in batch.roster:
            if isinstance(op, RosterJoin):
                room = self._rooms.setdefault(op.room_id, _RoomRoster())
                key = (tier_rank(op.participant), op.seq)
                if key not in room.rows:
                    room.add(key, _Row(op.participant.sid, pack_struct(op.participant)))
                continue
            sid = op.sid if isinstance(op, RosterLeave) else op.participant.sid
            found = self._rooms.get(op.room_id)
            for row in found.by_session.get((sid, op.since_seq), ()) if found else ():
                if isinstance(op, RosterUpdate):
                    row.info = pack_struct(op.participant)
                elif row.left_seq is None:
                    row.left_seq, row.left_at = op.seq, batch.now_ms
        self._snapshots.update(batch.snapshots)
        for room_id, seq in batch.deleted.items():
            if room_id in self._snapshots and self._snapshots[room_id][0] <= seq:
                del self._snapshots[room_id]
            ended = self._rooms.pop(room_id, None)
            for key, row in sorted(ended.rows.items()) if ended else ():
                if key[1] > seq:
                    self._rooms.setdefault(room_id, _RoomRoster()).add(key, row)
        self._set_aside.extend(batch.poisoned)
        if batch.applied_seq is not None:
            self._applied_seq = batch.applied_seq

    async def load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
        return self._applied_seq, dict(self._snapshots)

    async def poisoned(self, limit: int) -> list[PoisonedItem]:
        return self._set_aside[-limit:] if limit > 0 else []

    async def range(
        self, room_id: str, rank: int, lower: int, snapshot_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        room = self._rooms.get(room_id)
        seqs = room.seqs[rank] if room else []
        out: list[tuple[int, bytes]] = []
        for i in range(bisect.bisect_right(seqs, lower), len(seqs)):
            if seqs[i] > snapshot_seq or len(out) >= limit or room is None:
                break
            row = room.rows[rank, seqs[i]]
            if row.visible(seqs[i], snapshot_seq):
                out.append((seqs[i], row.info))
        return out

    async def count(self, room_id: str, ranks: list[int], snapshot_seq: int) -> int:
        room = self._rooms.get(room_id)
        rows = room.rows.items() if room else ()
        return sum(1 for k, row in rows if k[0] in ranks and row.visible(k[1], snapshot_seq))

    async def prune(self, left_before_ms: int) -> int:
        pruned = 0
        for room_id, room in list(self._rooms.items()):
            keep = [
                (key, row)
                for key, row in room.rows.items()
                if row.left_at is None or row.left_at >= left_before_ms
            ]
            if len(keep) < len(room.rows):
                pruned += len(room.rows) - len(keep)
                self._rooms[room_id] = fresh = _RoomRoster()
                for key, row in sorted(keep, key=lambda item: item[0]):
                    fresh.add(key, row)
        return pruned

    async def close(self) -> None:
        self._rooms.clear()


class MemoryStore(CheckedStore):
    """The in-process `Store`: the same semantics as `SqlStore`, no durability."""

    def __init__(self) -> None:
        super().__init__(_MemoryTables())
