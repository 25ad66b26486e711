"""The statekeeper's persistence: viewer/speaker rosters, room snapshots, the checkpoint.

`Store` is the seam; `SqlStore` (SQLAlchemy async: SQLite via aiosqlite embedded,
PostgreSQL via asyncpg in production) and `MemoryStore` (an in-process twin for unit tests
of pure cores) implement it with identical semantics, pinned by one contract test class.

A roster row is one participant's stay in one tier of one room, keyed by
``(room_id, tier_rank, since_seq)`` (speaker rank 0, viewer rank 1; a log sequence creates
at most one row per tier in a room). A departure only stamps ``left_seq``/``left_at``; the
row stays until `prune`, so a walk pinned at a snapshot sequence S sees exactly the rows
with ``since_seq <= S`` and (``left_seq`` unset or ``> S``), however the room churns after.
`page` reads such a walk by keyset, never by OFFSET. A walk at S is complete only when
every roster op with a sequence at or below S was committed before the walk started.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    bindparam,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from schemas.codec import pack_struct, unpack_struct
from schemas.models import ParticipantInfo, Tier
from statekeeper.errors import SchemaVersionMismatch, StoreClosed
from statekeeper.outcomes import RosterJoin, RosterLeave, RosterUpdate
from statekeeper.persistence import PoisonedItem

SCHEMA_VERSION = 1
"""Bump with a migration note whenever a table changes shape. (A new table needs no bump:
`open` creates missing tables; the ``poisoned`` table came that way.)"""

TIER_RANKS: dict[Tier, int] = {"speaker": 0, "viewer": 1}
"""Speakers sort before viewers in a roster walk."""

RosterOp = RosterJoin | RosterLeave | RosterUpdate
RowKey = tuple[int, int]
"""A roster row's place in a walk: ``(tier_rank, since_seq)``."""
Page = list[tuple[RowKey, ParticipantInfo]]

_CHUNK = 5_000
_EVERY_SEQ = 2**63 - 1


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


# --------------------------------------------------------------------- shared pure logic


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


def _deletions(
    snapshots: Mapping[str, tuple[int, bytes]] | None,
    deleted_rooms: Iterable[str] | Mapping[str, int],
) -> dict[str, int]:
    if isinstance(deleted_rooms, Mapping):
        return dict(deleted_rooms)
    if isinstance(deleted_rooms, str):
        raise TypeError("deleted_rooms is a collection of room ids, not one id")
    deleted = dict.fromkeys(deleted_rooms, _EVERY_SEQ)
    clash = set(deleted).intersection(snapshots or ())
    if clash:
        raise ValueError(f"rooms both snapshotted and deleted in one batch: {sorted(clash)}")
    return deleted


@dataclasses.dataclass(frozen=True, slots=True)
class _Batch:
    """One checked `commit`: the ops as given, their bulk plan, and the rest."""

    roster: Sequence[RosterOp]
    phases: list[Phase]
    now_ms: int
    snapshots: dict[str, tuple[int, bytes]]
    deleted: dict[str, int]  # room -> the sequence that deleted it
    applied_seq: int | None
    poisoned: Sequence[PoisonedItem] = ()


# --------------------------------------------------------------------- the shared shell


class _StoreBase(abc.ABC):
    """Argument checks and the walk, shared so both stores behave exactly alike."""

    _closed = False

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
        deleted = _deletions(snapshots, deleted_rooms)
        phases = plan_phases(roster)  # also checks every op before anything is written
        await self._write(
            _Batch(roster, phases, now_ms, dict(snapshots or {}), deleted, applied_seq, poisoned)
        )

    async def poisoned(self, *, limit: int = 100) -> list[PoisonedItem]:
        """See `Store.poisoned`."""
        self._check_open()
        return await self._poisoned(limit)

    async def load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
        """See `Store.load`."""
        self._check_open()
        return await self._load()

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
            for seq, info in await self._range(
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
        return await self._count(room_id, ranks, snapshot_seq)

    async def prune(self, *, left_before_ms: int) -> int:
        """See `Store.prune`."""
        self._check_open()
        return await self._prune(left_before_ms)

    async def close(self) -> None:
        """See `Store.close`."""
        if not self._closed:
            self._closed = True
            await self._close()

    @abc.abstractmethod
    async def _write(self, batch: _Batch) -> None: ...

    @abc.abstractmethod
    async def _load(self) -> tuple[int, dict[str, tuple[int, bytes]]]: ...

    @abc.abstractmethod
    async def _poisoned(self, limit: int) -> list[PoisonedItem]: ...

    @abc.abstractmethod
    async def _range(
        self, room_id: str, rank: int, lower: int, snapshot_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` ``(since_seq, info)`` of one tier, ``lower < since_seq``, visible."""

    @abc.abstractmethod
    async def _count(self, room_id: str, ranks: list[int], snapshot_seq: int) -> int: ...

    @abc.abstractmethod
    async def _prune(self, left_before_ms: int) -> int: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...


# --------------------------------------------------------------------- in memory


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


class MemoryStore(_StoreBase):
    """The in-process `Store`: the same semantics as `SqlStore`, no durability.

    Roster ops apply one by one, in order: the reference `SqlStore`'s bulk plan must match.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _RoomRoster] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._applied_seq = 0
        self._set_aside: list[PoisonedItem] = []

    async def _write(self, batch: _Batch) -> None:
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

    async def _load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
        return self._applied_seq, dict(self._snapshots)

    async def _poisoned(self, limit: int) -> list[PoisonedItem]:
        return self._set_aside[-limit:] if limit > 0 else []

    async def _range(
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

    async def _count(self, room_id: str, ranks: list[int], snapshot_seq: int) -> int:
        room = self._rooms.get(room_id)
        rows = room.rows.items() if room else ()
        return sum(1 for k, row in rows if k[0] in ranks and row.visible(k[1], snapshot_seq))

    async def _prune(self, left_before_ms: int) -> int:
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

    async def _close(self) -> None:
        self._rooms.clear()


# --------------------------------------------------------------------- SQL

metadata = MetaData()

roster_table = Table(
    "roster",
    metadata,
    Column("room_id", String, nullable=False),
    Column("tier_rank", SmallInteger, nullable=False),
    Column("since_seq", BigInteger, nullable=False),
    Column("sid", String, nullable=False),
    Column("participant_id", String, nullable=False),
    Column("left_seq", BigInteger),
    Column("left_at", BigInteger),
    Column("info", LargeBinary, nullable=False),
    # The primary key is also the keyset walk's index: (room, tier, since_seq) order.
    PrimaryKeyConstraint("room_id", "tier_rank", "since_seq", name="pk_roster"),
    Index(
        "ix_roster_left_at",
        "left_at",
        sqlite_where=text("left_at IS NOT NULL"),
        postgresql_where=text("left_at IS NOT NULL"),
    ),
    sqlite_with_rowid=False,  # SQLite: rows clustered in walk order
)
snapshot_table = Table(
    "room_snapshot",
    metadata,
    Column("room_id", String, primary_key=True),
    Column("partition_id", Integer, nullable=False, index=True),
    Column("seq", BigInteger, nullable=False),
    Column("blob", LargeBinary, nullable=False),
)
checkpoint_table = Table(
    "checkpoint",
    metadata,
    Column("partition_id", Integer, primary_key=True, autoincrement=False),
    Column("applied_seq", BigInteger, nullable=False),
)
poisoned_table = Table(
    "poisoned",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("partition_id", Integer, nullable=False),
    Column("room", String, nullable=False),  # ascii()-escaped: storable whatever it held
    Column("kind", String, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("error", String, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("detail", LargeBinary, nullable=False),
)
schema_version_table = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
)

_r = roster_table.c
_s = snapshot_table.c
# A session's row, found through the primary key (one probe per tier; no session index).
_SESSION_ROW = (
    _r.room_id == bindparam("b_room"),
    text("roster.tier_rank IN (0, 1)"),
    _r.since_seq == bindparam("b_since"),
    _r.sid == bindparam("b_sid"),
)
_LEAVE = (
    update(roster_table)
    .where(*_SESSION_ROW, _r.left_seq.is_(None))
    .values(left_seq=bindparam("b_seq"), left_at=bindparam("b_at"))
)
_UPDATE = update(roster_table).where(*_SESSION_ROW).values(info=bindparam("b_info"))
_DROP_SNAPSHOT = delete(snapshot_table).where(
    _s.room_id == bindparam("b_room"), _s.seq <= bindparam("b_seq")
)
_DROP_ROSTER = delete(roster_table).where(
    _r.room_id == bindparam("b_room"),
    text("roster.tier_rank IN (0, 1)"),
    _r.since_seq <= bindparam("b_seq"),
)


def _visible(snapshot_seq: int) -> tuple[ColumnElement[bool], ...]:
    return (
        _r.since_seq <= snapshot_seq,
        or_(_r.left_seq.is_(None), _r.left_seq > snapshot_seq),
    )


def _async_url(database_url: str) -> URL:
    url = make_url(database_url)
    if url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    return url


def _sqlite_setup(engine: AsyncEngine) -> None:
    """WAL for readers beside the writer; explicit BEGIN (IMMEDIATE for writes)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("stagecast_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class SqlStore(_StoreBase):
    """The SQL `Store` on one SQLAlchemy async engine, which it owns.

    Open with ``await SqlStore.open(url)``: ``sqlite+aiosqlite:///path.db`` (embedded) or
    ``postgresql+asyncpg://user@host/db`` (bare ``sqlite:``/``postgresql:`` URLs get those
    drivers). Tables are created when missing. `partition` scopes the checkpoint and the
    snapshots `load` returns, for statekeepers sharing one database by partition.
    """

    def __init__(self, engine: AsyncEngine, partition: int) -> None:
        self._engine = engine
        self._writer = engine.execution_options(stagecast_write=True)
        self._partition = partition
        self._pg = engine.dialect.name == "postgresql"

    @classmethod
    async def open(cls, database_url: str, *, partition: int = 0) -> SqlStore:
        """Connect, create missing tables, check the schema version."""
        engine = create_async_engine(_async_url(database_url))
        if engine.dialect.name == "sqlite":
            _sqlite_setup(engine)
        store = cls(engine, partition)
        try:
            async with store._writer.begin() as conn:
                await conn.run_sync(metadata.create_all)
                found = (await conn.execute(select(schema_version_table.c.version))).scalar()
                if found is None:
                    await conn.execute(
                        schema_version_table.insert().values(id=1, version=SCHEMA_VERSION)
                    )
                elif found != SCHEMA_VERSION:
                    raise SchemaVersionMismatch(found, SCHEMA_VERSION)
        except BaseException:
            await engine.dispose()
            raise
        return store

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    async def _write(self, batch: _Batch) -> None:
        if not (
            batch.phases
            or batch.snapshots
            or batch.deleted
            or batch.poisoned
            or batch.applied_seq is not None
        ):
            return
        async with self._writer.begin() as conn:
            for phase in batch.phases:
                await self._apply(conn, phase, batch.now_ms)
            if batch.snapshots:
                upsert = self._insert(snapshot_table)
                upsert = upsert.on_conflict_do_update(
                    index_elements=[_s.room_id],
                    set_={k: upsert.excluded[k] for k in ("partition_id", "seq", "blob")},
                )
                rows = [
                    {"room_id": room, "partition_id": self._partition, "seq": seq, "blob": blob}
                    for room, (seq, blob) in batch.snapshots.items()
                ]
                await _executemany(conn, upsert, rows)
            gone = [{"b_room": room, "b_seq": seq} for room, seq in batch.deleted.items()]
            await _executemany(conn, _DROP_SNAPSHOT, gone)
            await _executemany(conn, _DROP_ROSTER, gone)
            if batch.poisoned:
                await conn.execute(
                    poisoned_table.insert(),
                    [
                        {"partition_id": self._partition, **dataclasses.asdict(item)}
                        for item in batch.poisoned
                    ],
                )
            if batch.applied_seq is not None:
                mark = self._insert(checkpoint_table).values(
                    partition_id=self._partition, applied_seq=batch.applied_seq
                )
                mark = mark.on_conflict_do_update(
                    index_elements=[checkpoint_table.c.partition_id],
                    set_={"applied_seq": mark.excluded.applied_seq},
                )
                await conn.execute(mark)

    async def _apply(self, conn: AsyncConnection, phase: Phase, now_ms: int) -> None:
        joins = [
            {
                "room_id": op.room_id,
                "tier_rank": tier_rank(op.participant),
                "since_seq": op.seq,
                "sid": op.participant.sid,
                "participant_id": op.participant.id,
                "info": pack_struct(op.participant),
            }
            for op in phase.joins
        ]
        await _executemany(conn, self._insert(roster_table).on_conflict_do_nothing(), joins)
        leaves = [
            {"b_room": r, "b_sid": s, "b_since": q, "b_seq": op.seq, "b_at": now_ms}
            for (r, s, q), op in phase.leaves.items()
        ]
        await _executemany(conn, _LEAVE, leaves)
        updates = [
            {"b_room": r, "b_sid": s, "b_since": q, "b_info": pack_struct(op.participant)}
            for (r, s, q), op in phase.updates.items()
        ]
        await _executemany(conn, _UPDATE, updates)

    async def _load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
        async with self._engine.connect() as conn:
            if self._pg:  # one snapshot of the database for both reads
                await conn.execution_options(isolation_level="REPEATABLE READ")
            applied = await conn.scalar(
                select(checkpoint_table.c.applied_seq).where(
                    checkpoint_table.c.partition_id == self._partition
                )
            )
            snaps = await conn.execute(
                select(_s.room_id, _s.seq, _s.blob).where(_s.partition_id == self._partition)
            )
            rooms = {room_id: (seq, bytes(blob)) for room_id, seq, blob in snaps}
        return int(applied or 0), rooms

    async def _poisoned(self, limit: int) -> list[PoisonedItem]:
        p = poisoned_table.c
        stmt = (
            select(p.room, p.kind, p.seq, p.error, p.at_ms, p.detail)
            .where(p.partition_id == self._partition)
            .order_by(p.id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = list(await conn.execute(stmt))
        return [
            PoisonedItem(room, kind, seq, error, at_ms, bytes(detail))
            for room, kind, seq, error, at_ms, detail in reversed(rows)
        ]

    async def _range(
        self, room_id: str, rank: int, lower: int, snapshot_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        stmt = (
            select(_r.since_seq, _r.info)
            .where(_r.room_id == room_id, _r.tier_rank == rank, _r.since_seq > lower)
            .where(*_visible(snapshot_seq))
            .order_by(_r.since_seq)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            return [(seq, bytes(info)) for seq, info in await conn.execute(stmt)]

    async def _count(self, room_id: str, ranks: list[int], snapshot_seq: int) -> int:
        stmt = (
            select(func.count())
            .select_from(roster_table)
            .where(_r.room_id == room_id, _r.tier_rank.in_(ranks))
            .where(*_visible(snapshot_seq))
        )
        async with self._engine.connect() as conn:
            return int(await conn.scalar(stmt) or 0)

    async def _prune(self, left_before_ms: int) -> int:
        async with self._writer.begin() as conn:
            done = await conn.execute(delete(roster_table).where(_r.left_at < left_before_ms))
            return int(done.rowcount)

    async def _close(self) -> None:
        await self._engine.dispose()


async def _executemany(conn: AsyncConnection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """Run `stmt` once per row, in DBAPI executemany batches of `_CHUNK`."""
    for start in range(0, len(rows), _CHUNK):
        await conn.execute(stmt, rows[start : start + _CHUNK])


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
