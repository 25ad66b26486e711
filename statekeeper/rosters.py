"""What both roster stores share: row keys, the walk plan, bulk phases, the checked shell.

`CheckedStore` implements every `statekeeper.store.Store` call once, over a small
`RosterTables` backend (`statekeeper.memory_store`, `statekeeper.sql_store`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from schemas.codec import unpack_struct
from schemas.models import ParticipantInfo, Tier
from statekeeper.errors import StoreClosed
from statekeeper.outcomes import RosterJoin, RosterLeave, RosterUpdate
from statekeeper.persistence import PoisonedItem

TIER_RANKS: dict[Tier, int] = {"speaker": 0, "viewer": 1}
"""Speakers sort before viewers in a roster walk."""

RosterOp = RosterJoin | RosterLeave | RosterUpdate
RowKey = tuple[int, int]
"""A roster row's place in a walk: ``(tier_rank, since_seq)``."""
Page = list[tuple[RowKey, ParticipantInfo]]

EVERY_SEQ = 2**63 - 1
"""A deletion sequence above any: drop everything of the room."""


def tier_rank(participant: ParticipantInfo) -> int:
    """The rank of the tier a participant is rostered in."""
    return TIER_RANKS["viewer" if participant.is_viewer else "speaker"]


def walk_plan(tier: Tier | None, after: RowKey | None, from_seq: int = 0) -> list[tuple[int, int]]:
    """The ranges a page reads, in order: ``(tier_rank, since_seq lower bound, exclusive)``.

    Sequences are non-negative, so -1 means "from the start of the tier"; no bound is below
    ``from_seq - 1`` (rows that joined before `from_seq` are never read).
    """
    ranks = sorted(TIER_RANKS.values()) if tier is None else [TIER_RANKS[tier]]
    floor = max(from_seq, 0) - 1
    plan = []
    for rank in ranks:
        if after is None or rank > after[0]:
            plan.append((rank, floor))
        elif rank == after[0]:
            plan.append((rank, max(after[1], floor)))
    return plan


@dataclasses.dataclass(slots=True)
class Phase:
    """Roster ops that commute into one join batch followed by leave and update batches."""

    joins: list[RosterJoin] = dataclasses.field(default_factory=list)
    leaves: dict[tuple[str, str, int], RosterLeave] = dataclasses.field(default_factory=dict)
    updates: dict[tuple[str, str, int], RosterUpdate] = dataclasses.field(default_factory=dict)


def plan_phases(ops: Sequence[RosterOp]) -> list[Phase]:
    """Group roster ops into bulk batches with the same effect as applying them in order.

    Joins of a phase run first, then its leaves (the first per row wins) and updates (the
    last per row wins); a leave and an update commute. A join whose row an earlier leave or
    update of the current phase targeted opens a new phase, so order is kept exactly.
    """
    phases: list[Phase] = []
    current = Phase()
    for op in ops:
        if isinstance(op, RosterJoin):
            key = (op.room_id, op.participant.sid, op.seq)
            if key in current.leaves or key in current.updates:
                phases.append(current)
                current = Phase()
            current.joins.append(op)
        elif isinstance(op, RosterLeave):
            current.leaves.setdefault((op.room_id, op.sid, op.since_seq), op)
        elif isinstance(op, RosterUpdate):
            current.updates[(op.room_id, op.participant.sid, op.since_seq)] = op
        else:
            raise TypeError(f"not a roster op: {type(op).__name__}")
    if current.joins or current.leaves or current.updates:
        phases.append(current)
    return phases


def deletions(
    snapshots: Mapping[str, tuple[int, bytes]] | None,
    deleted_rooms: Iterable[str] | Mapping[str, int],
) -> dict[str, int]:
    if isinstance(deleted_rooms, Mapping):
        return dict(deleted_rooms)
    if isinstance(deleted_rooms, str):
        raise TypeError("deleted_rooms is a collection of room ids, not one id")
    deleted = dict.fromkeys(deleted_rooms, EVERY_SEQ)
    clash = set(deleted).intersection(snapshots or ())
    if clash:
        raise ValueError(f"rooms both snapshotted and deleted in one batch: {sorted(clash)}")
    return deleted


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """One checked `commit`: the ops as given, their bulk plan, and the rest."""

    roster: Sequence[RosterOp]
    phases: list[Phase]
    now_ms: int
    snapshots: dict[str, tuple[int, bytes]]
    deleted: dict[str, int]  # room -> the sequence that deleted it
    applied_seq: int | None
    poisoned: Sequence[PoisonedItem] = ()


class RosterTables(Protocol):
    """What a store's backend provides `CheckedStore` (arguments already checked)."""

    async def write(self, batch: Batch) -> None:
        """Apply one checked batch atomically (see `Store.commit`)."""
        ...

    async def load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
        """See `Store.load`."""
        ...

    async def poisoned(self, limit: int) -> list[PoisonedItem]:
        """See `Store.poisoned`."""
        ...

    async def range(
        self, room_id: str, rank: int, lower: int, snapshot_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` ``(since_seq, info)`` of one tier, ``lower < since_seq``, visible."""
        ...

    async def count(self, room_id: str, ranks: list[int], snapshot_seq: int) -> int:
        """How many rows of the room in `ranks` are visible at `snapshot_seq`."""
        ...

    async def prune(self, left_before_ms: int) -> int:
        """See `Store.prune`."""
        ...

    async def close(self) -> None:
        """Release the backend's resources (called once)."""
        ...


class CheckedStore:
    """The one implementation of `Store`'s calls over a `RosterTables` backend: argument
    checks and the walk, shared so the memory and the SQL store behave exactly alike."""

    def __init__(self, tables: RosterTables) -> None:
        self._tables = tables
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    async def commit(
        self,
        *,
        roster: Sequence[RosterOp],
        now_ms: int,
        snapshots: Mapping[str, tuple[int, bytes]] | None = None,
        deleted_rooms: Iterable[str] | Mapping[str, int] = (),
        applied_seq: int | None = None,
        poisoned: Sequence[PoisonedItem] = (),
    ) -> None:
        """See `Store.commit`."""
        self._check_open()
        deleted = deletions(snapshots, deleted_rooms)
        phases = plan_phases(roster)  # also checks every op before anything is written
        await self._tables.write(
            Batch(roster, phases, now_ms, dict(snapshots or {}), deleted, applied_seq, poisoned)
        )

    async def poisoned(self, *, limit: int = 100) -> list[PoisonedItem]:
        """See `Store.poisoned`."""
        self._check_open()
        return await self._tables.poisoned(limit)

    async def load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
        """See `Store.load`."""
        self._check_open()
        return await self._tables.load()

    async def page(
        self,
        room_id: str,
        *,
        tier: Tier | None,
        limit: int,
        snapshot_seq: int,
        after: RowKey | None,
        from_seq: int = 0,
    ) -> Page:
        """See `Store.page`."""
        self._check_open()
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, not {limit}")
        out: Page = []
        for rank, lower in walk_plan(tier, after, from_seq):
            for seq, info in await self._tables.range(
                room_id, rank, lower, snapshot_seq, limit - len(out)
            ):
                out.append(((rank, seq), unpack_struct(info, ParticipantInfo)))
            if len(out) >= limit:
                break
        return out

    async def count(self, room_id: str, *, tier: Tier | None, snapshot_seq: int) -> int:
        """See `Store.count`."""
        self._check_open()
        ranks = sorted(TIER_RANKS.values()) if tier is None else [TIER_RANKS[tier]]
        return await self._tables.count(room_id, ranks, snapshot_seq)

    async def prune(self, *, left_before_ms: int) -> int:
        """See `Store.prune`."""
        self._check_open()
        return await self._tables.prune(left_before_ms)

    async def close(self) -> None:
        """See `Store.close`."""
        if not self._closed:
            self._closed = True
            await self._tables.close()
