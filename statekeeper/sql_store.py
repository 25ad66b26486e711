"""The SQL `Store`: SQLAlchemy async, SQLite via aiosqlite embedded, PostgreSQL via asyncpg."""

from __future__ import annotations

import dataclasses
from typing import Any

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

from schemas.codec import pack_struct
from statekeeper.errors import FencedOut, SchemaVersionMismatch
from statekeeper.leases import Fence
from statekeeper.persistence import PoisonedItem
from statekeeper.rosters import Batch, CheckedStore, Phase, tier_rank

SCHEMA_VERSION = 1
"""Bump with a migration note whenever a table changes shape. (A new table needs no bump:
`open` creates missing tables; the ``poisoned`` table came that way.)"""

_CHUNK = 5_000
_SCHEMA_LOCK = 0x5354_4147
"""The PostgreSQL advisory lock that serializes creating the tables."""

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
partition_owners_table = Table(
    "partition_owners",
    metadata,
    Column("partition_id", Integer, primary_key=True, autoincrement=False),
    Column("owner", String, nullable=False),
    Column("revision", BigInteger, nullable=False),
)
"""Who last wrote each partition's rows, at which lease revision (`Fence`): a write
carrying a lower revision than the row's is refused by the database (`FencedOut`)."""
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


IDLE_IN_TRANSACTION_MS = 4_000
"""PostgreSQL ends a statekeeper's session that sits this long inside a transaction
(``idle_in_transaction_session_timeout``). A holder paused mid-write (SIGSTOP, a VM stall,
a GC pause) keeps the row lock its claim of `partition_owners` took; without this, the
partition's next holder would wait on that lock for as long as the pause lasts. Ours are
short batches written back to back, so a healthy writer is never idle anywhere near it."""


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


class _SqlTables:
    """The SQL rows behind `SqlStore`, on one engine."""

    def __init__(
        self,
        engine: AsyncEngine,
        partition: int,
        fence: Fence | None = None,
        owns_engine: bool = True,
    ) -> None:
        self._engine = engine
        self._writer = engine.execution_options(stagecast_write=True)
        self._partition = partition
        self._fence = fence
        self._owns_engine = owns_engine
        self._pg = engine.dialect.name == "postgresql"
        self._join_sql = _join_sql(self._pg)

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    async def write(self, batch: Batch) -> None:
        if not (
            batch.phases
            or batch.snapshots
            or batch.deleted
            or batch.poisoned
            or batch.applied_seq is not None
        ):
            return
        async with self._writer.begin() as conn:
            await self._fenced(conn)
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

    async def _fenced(self, conn: AsyncConnection) -> None:
        """With a fence: refuse unless the lease holds here and no later holder has
        written (the owners row, locked and moved to this revision in this transaction)."""
        fence = self._fence
        if fence is None:
            return
        fence.check()
        o = partition_owners_table.c
        claim = self._insert(partition_owners_table).values(
            partition_id=self._partition, owner=fence.owner, revision=fence.revision
        )
        claim = claim.on_conflict_do_update(
            index_elements=[o.partition_id],
            set_={"owner": claim.excluded.owner, "revision": claim.excluded.revision},
            where=o.revision <= claim.excluded.revision,
        )
        done = await conn.execute(claim)
        if done.rowcount == 0:
            raise FencedOut(self._partition, fence.revision)

    async def _apply(self, conn: AsyncConnection, phase: Phase, now_ms: int) -> None:
        # Joins are most of the rows: plain DBAPI executemany of tuples, past SQLAlchemy's
        # per-row parameter processing (half the CPU of a row through `conn.execute`).
        joins = [
            (
                op.room_id,
                tier_rank(op.participant),
                op.seq,
                op.participant.sid,
                op.participant.id,
                pack_struct(op.participant),
            )
            for op in phase.joins
        ]
        for start in range(0, len(joins), _CHUNK):
            await conn.exec_driver_sql(self._join_sql, joins[start : start + _CHUNK])
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

    async def load(self) -> tuple[int, dict[str, tuple[int, bytes]]]:
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

    async def poisoned(self, limit: int) -> list[PoisonedItem]:
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

    async def range(
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

    async def count(self, room_id: str, ranks: list[int], snapshot_seq: int) -> int:
        stmt = (
            select(func.count())
            .select_from(roster_table)
            .where(_r.room_id == room_id, _r.tier_rank.in_(ranks))
            .where(*_visible(snapshot_seq))
        )
        async with self._engine.connect() as conn:
            return int(await conn.scalar(stmt) or 0)

    async def prune(self, left_before_ms: int) -> int:
        async with self._writer.begin() as conn:
            await self._fenced(conn)
            done = await conn.execute(delete(roster_table).where(_r.left_at < left_before_ms))
            return int(done.rowcount)

    async def close(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()


class SqlStore(CheckedStore):
    """The SQL `Store` on one SQLAlchemy async engine, which it owns.

    Open with ``await SqlStore.open(url)``: ``sqlite+aiosqlite:///path.db`` (embedded) or
    ``postgresql+asyncpg://user@host/db`` (bare ``sqlite:``/``postgresql:`` URLs get those
    drivers). Tables are created when missing. `partition` scopes the checkpoint and the
    snapshots `load` returns, for statekeepers sharing one database by partition.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        partition: int,
        fence: Fence | None = None,
        owns_engine: bool = True,
    ) -> None:
        self._sql = _SqlTables(engine, partition, fence, owns_engine)
        super().__init__(self._sql)

    def scoped(self, partition: int, fence: Fence | None = None) -> SqlStore:
        """A store of one partition on this store's engine (closing it leaves the engine
        open). With a `fence`, every write first checks the lease and claims the
        partition's `partition_owners` row at the fence's revision, in the same
        transaction: a stale holder's write is refused (`FencedOut`)."""
        return SqlStore(self._sql._engine, partition, fence, owns_engine=False)

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        partition: int = 0,
        idle_in_transaction_ms: int = IDLE_IN_TRANSACTION_MS,
    ) -> SqlStore:
        """Connect, create missing tables, check the schema version.

        On PostgreSQL, a session left idle inside a transaction for
        `idle_in_transaction_ms` is ended by the server (see `IDLE_IN_TRANSACTION_MS`).
        """
        url = _async_url(database_url)
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql":
            settings = {"idle_in_transaction_session_timeout": str(idle_in_transaction_ms)}
            connect_args["server_settings"] = settings
        engine = create_async_engine(url, connect_args=connect_args)
        if engine.dialect.name == "sqlite":
            _sqlite_setup(engine)
        store = cls(engine, partition)
        writer = store._sql._writer
        try:
            async with writer.begin() as conn:
                if store.dialect == "postgresql":  # statekeepers starting at once: in turn
                    await conn.execute(text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))
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
        return self._sql._engine.dialect.name


_JOIN_COLUMNS = ("room_id", "tier_rank", "since_seq", "sid", "participant_id", "info")


def _join_sql(pg: bool) -> str:
    """The roster insert of joins, in the driver's own parameter style (qmark for sqlite3,
    $n for asyncpg); a row already there stays (idempotent, as the checkpoint needs)."""
    marks = ", ".join(f"${n}" if pg else "?" for n in range(1, len(_JOIN_COLUMNS) + 1))
    columns = ", ".join(_JOIN_COLUMNS)
    return f"INSERT INTO {roster_table.name} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"


async def _executemany(conn: AsyncConnection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """Run `stmt` once per row, in DBAPI executemany batches of `_CHUNK`."""
    for start in range(0, len(rows), _CHUNK):
        await conn.execute(stmt, rows[start : start + _CHUNK])
