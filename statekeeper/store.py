"""The statekeeper's persistence seam: viewer/speaker rosters, room snapshots, the checkpoint.

`Store` is the seam; `SqlStore` (`statekeeper.sql_store`: SQLAlchemy async, SQLite via
aiosqlite embedded, PostgreSQL via asyncpg in production) and `MemoryStore`
(`statekeeper.memory_store`: an in-process twin for unit tests of pure cores) implement it
with identical semantics, through the one checked shell in `statekeeper.rosters`, pinned by
one contract test class. Both are importable from here.

A roster row is one participant's stay in one tier of one room, keyed by
``(room_id, tier_rank, since_seq)`` (speaker rank 0, viewer rank 1; a log sequence creates
at most one row per tier in a room). A departure only stamps ``left_seq``/``left_at``; the
row stays until `prune`, so a walk pinned at a snapshot sequence S sees exactly the rows
with ``since_seq <= S`` and (``left_seq`` unset or ``> S``), however the room churns after.
`page` reads such a walk by keyset, never by OFFSET. A walk at S is complete only when
every roster op with a sequence at or below S was committed before the walk started.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from schemas.models import Tier
from statekeeper.memory_store import MemoryStore
from statekeeper.persistence import PoisonedItem
from statekeeper.rosters import (
    TIER_RANKS,
    Page,
    Phase,
    RosterOp,
    RowKey,
    plan_phases,
    tier_rank,
    walk_plan,
)
from statekeeper.sql_store import SCHEMA_VERSION, SqlStore


class Store(Protocol):
    """Roster rows, room snapshots and the checkpoint, written in atomic batches."""

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
        """Apply one batch in one transaction, in this order: roster ops as given (each
        idempotent, so a replay after a crash changes nothing; `now_ms` stamps departures
        for `prune`), upsert `snapshots` (room -> (seq, blob)), drop `deleted_rooms`, record
        the `poisoned` items set aside, set the checkpoint to `applied_seq` when given.

        `deleted_rooms` maps each room to the log sequence that deleted it: its roster
        rows with ``since_seq`` and its snapshot with ``seq`` at or below that go, so a room
        re-created under the same id after that sequence keeps what it has, whenever it was
        written. A plain iterable of ids drops everything of those rooms, and then a room
        may not also be in `snapshots` (`ValueError`)."""
        ...

    async def poisoned(self, *, limit: int = 100) -> list[PoisonedItem]:
        """The last `limit` items set aside (newest last), for inspection."""
        ...

    async def load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
        """The checkpoint (0 when none) and every room snapshot, read consistently."""
        ...

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
        """Up to `limit` rows visible at `snapshot_seq`, strictly after key `after`, in key
        order (speakers first); `tier` None walks both tiers. Rows that joined before
        `from_seq` (an earlier room of the same id, not dropped yet) are skipped."""
        ...

    async def count(self, room_id: str, *, tier: Tier | None, snapshot_seq: int) -> int:
        """How many rows of the room (and tier) are visible at `snapshot_seq`."""
        ...

    async def prune(self, *, left_before_ms: int) -> int:
        """Delete departed rows with ``left_at < left_before_ms``; returns how many.
        Pass at most ``now - CURSOR_LIFETIME_MS`` so no live cursor loses a row."""
        ...

    async def close(self) -> None:
        """Release everything; idempotent. Any other call afterwards raises `StoreClosed`."""
        ...


__all__ = [
    "SCHEMA_VERSION",
    "TIER_RANKS",
    "MemoryStore",
    "Page",
    "Phase",
    "RosterOp",
    "RowKey",
    "SqlStore",
    "Store",
    "plan_phases",
    "tier_rank",
    "walk_plan",
]
