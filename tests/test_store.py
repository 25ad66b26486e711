"""The roster store contract, run against MemoryStore, SqlStore/SQLite and SqlStore/PostgreSQL.

PostgreSQL runs when STAGECAST_TEST_POSTGRES_URL names a server (for example
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``); every test gets its own fresh
database there, dropped afterwards, so runs never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import ParticipantInfo, Tier
from stagecast.bench.chaosload import fresh_database
from statekeeper.errors import StoreClosed
from statekeeper.outcomes import RosterJoin, RosterLeave, RosterUpdate
from statekeeper.persistence import PoisonedItem
from statekeeper.store import MemoryStore, Page, RosterOp, RowKey, SqlStore, Store

PG_URL = os.environ.get("STAGECAST_TEST_POSTGRES_URL")
ROOM = "webinar"
MAX_PAGES = 10_000


def person(n: int, *, viewer: bool, name: str = "") -> ParticipantInfo:
    return ParticipantInfo(sid=f"PA_{n}", id=f"user-{n}", name=name or f"P{n}", is_viewer=viewer)


async def walk(
    store: Store, room: str, *, tier: Tier | None, snapshot_seq: int, limit: int = 50
) -> Page:
    """Every page of a walk, checking each page is in strictly increasing key order."""
    rows: Page = []
    after: RowKey | None = None
    for _ in range(MAX_PAGES):
        page = await store.page(
            room, tier=tier, limit=limit, snapshot_seq=snapshot_seq, after=after
        )
        keys = [key for key, _info in page]
        assert keys == sorted(set(keys)) and (after is None or not keys or keys[0] > after)
        rows.extend(page)
        if len(page) < limit:
            return rows
        after = keys[-1]
    raise AssertionError("the walk did not end")


class Roster:
    """A test-side model of what the fold would emit, with the expected visible sets."""

    def __init__(self, room: str = ROOM) -> None:
        self.room = room
        self.seq = 0
        self.next_id = 0
        self.live: dict[str, tuple[int, ParticipantInfo]] = {}  # sid -> (since_seq, info)
        self.history: list[tuple[RowKey, str, int | None]] = []  # key, sid, left_seq
        self.row_of: dict[tuple[str, int], int] = {}  # (sid, since_seq) -> history index

    def join(self, *, viewer: bool, n: int | None = None, seq: int | None = None) -> RosterJoin:
        if n is None:
            n, self.next_id = self.next_id, self.next_id + 1
        if seq is None:
            self.seq += 1
            seq = self.seq
        info = person(n, viewer=viewer)
        self.live[info.sid] = (seq, info)
        self.row_of[info.sid, seq] = len(self.history)
        self.history.append(((int(viewer), seq), info.sid, None))
        return RosterJoin(self.room, info, seq)

    def leave(self, sid: str, *, seq: int | None = None) -> RosterLeave:
        if seq is None:
            self.seq += 1
            seq = self.seq
        since, _info = self.live.pop(sid)
        i = self.row_of[sid, since]
        self.history[i] = (self.history[i][0], sid, seq)
        return RosterLeave(self.room, sid, since, seq)

    def promote(self, sid: str) -> list[RosterOp]:
        """A live tier change: leave the old row and join the new tier at one sequence."""
        self.seq += 1
        _since, info = self.live[sid]
        n = int(sid.removeprefix("PA_"))
        return [
            self.leave(sid, seq=self.seq),
            self.join(viewer=not info.is_viewer, n=n, seq=self.seq),
        ]

    def visible(self, snapshot_seq: int, tier: Tier | None = None) -> list[tuple[RowKey, str]]:
        ranks = {0, 1} if tier is None else {0 if tier == "speaker" else 1}
        return sorted(
            (key, sid)
            for key, sid, left in self.history
            if key[0] in ranks and key[1] <= snapshot_seq and (left is None or left > snapshot_seq)
        )


def keyed(rows: Page) -> list[tuple[RowKey, str]]:
    return [(key, info.sid) for key, info in rows]


@contextlib.asynccontextmanager
async def fresh_postgres_database(base_url: str) -> AsyncIterator[str]:
    """A uniquely named, empty database on the server of `base_url`, dropped afterwards."""
    async with fresh_database(base_url, prefix="stagecast_test") as url:
        yield str(url)


class StoreContract:
    """Every `Store` must pass these; subclasses provide the `store` fixture."""

    durable = True

    async def reopen(self, store: Store) -> Store:
        """A new store on the same data (durable stores only)."""
        raise NotImplementedError

    async def test_full_walk_yields_exactly_the_snapshot(self, store: Store) -> None:
        model = Roster()
        ops: list[RosterOp] = [model.join(viewer=False) for _ in range(5)]
        ops += [model.join(viewer=True) for _ in range(3000)]
        rng = random.Random(1)
        ops += [model.leave(sid) for sid in rng.sample(sorted(model.live), 300)]
        await store.commit(roster=ops, now_ms=1_000)
        for snapshot in (model.seq, 2000, 3005):
            rows = await walk(store, ROOM, tier=None, snapshot_seq=snapshot)
            assert keyed(rows) == model.visible(snapshot)
            assert len({info.sid for _key, info in rows}) == len(rows)
            assert await store.count(ROOM, tier=None, snapshot_seq=snapshot) == len(rows)

    async def test_walk_is_stable_under_churn(self, store: Store) -> None:
        model = Roster()
        rng = random.Random(7)
        ops: list[RosterOp] = [model.join(viewer=False) for _ in range(5)]
        ops += [model.join(viewer=True) for _ in range(2000)]
        ops += [model.leave(sid) for sid in rng.sample(sorted(model.live), 100)]
        await store.commit(roster=ops, now_ms=1_000)
        snapshot = model.seq
        expected = model.visible(snapshot)
        departed = [sid for _key, sid, left in model.history if left is not None]
        rows: Page = []
        after: RowKey | None = None
        for step in range(MAX_PAGES):
            page = await store.page(ROOM, tier=None, limit=50, snapshot_seq=snapshot, after=after)
            rows.extend(page)
            if len(page) < 50:
                break
            after = page[-1][0]
            # Churn between pages: joins, leaves anywhere (walked or not), re-joins, promotions.
            churn: list[RosterOp] = [model.join(viewer=True) for _ in range(30)]
            churn += [model.leave(sid) for sid in rng.sample(sorted(model.live), 25)]
            for sid in rng.sample(departed, 3):
                if sid not in model.live:
                    churn.append(model.join(viewer=True, n=int(sid.removeprefix("PA_"))))
            churn += model.promote(rng.choice(sorted(model.live)))
            await store.commit(roster=churn, now_ms=2_000 + step)
            assert await store.count(ROOM, tier=None, snapshot_seq=snapshot) == len(expected)
        assert keyed(rows) == expected
        assert keyed(await walk(store, ROOM, tier=None, snapshot_seq=model.seq)) == (
            model.visible(model.seq)
        )

    async def test_tier_filter_and_speakers_first(self, store: Store) -> None:
        model = Roster()
        ops: list[RosterOp] = []
        for i in range(120):  # speakers and viewers interleaved in log order
            ops.append(model.join(viewer=i % 10 != 0))
        await store.commit(roster=ops, now_ms=1)
        both = await walk(store, ROOM, tier=None, snapshot_seq=model.seq, limit=7)
        speakers = await walk(store, ROOM, tier="speaker", snapshot_seq=model.seq, limit=7)
        viewers = await walk(store, ROOM, tier="viewer", snapshot_seq=model.seq, limit=7)
        assert [info.is_viewer for _k, info in both] == [False] * 12 + [True] * 108
        assert keyed(speakers) == model.visible(model.seq, "speaker")
        assert keyed(viewers) == model.visible(model.seq, "viewer")
        assert both == speakers + viewers
        assert await store.count(ROOM, tier="speaker", snapshot_seq=model.seq) == 12
        assert await store.count(ROOM, tier="viewer", snapshot_seq=model.seq) == 108
        assert await store.page(ROOM, tier="viewer", limit=5, snapshot_seq=0, after=None) == []
        assert await store.page("elsewhere", tier=None, limit=5, snapshot_seq=99, after=None) == []
        with pytest.raises(ValueError):
            await store.page(ROOM, tier=None, limit=0, snapshot_seq=1, after=None)

    async def test_replay_changes_nothing(self, store: Store) -> None:
        model = Roster()
        ops: list[RosterOp] = [model.join(viewer=True) for _ in range(200)]
        ops += [model.leave(f"PA_{i}") for i in range(0, 200, 3)]
        ops += model.promote("PA_1")
        ops.append(RosterUpdate(ROOM, person(2, viewer=True, name="renamed"), 3))
        await store.commit(roster=ops, now_ms=1_000)
        before = await walk(store, ROOM, tier=None, snapshot_seq=model.seq)
        at_50 = await walk(store, ROOM, tier=None, snapshot_seq=50)
        await store.commit(roster=ops, now_ms=5_000)  # a crash replays the same batch
        await store.commit(roster=ops[100:], now_ms=6_000)  # ... or only its tail
        assert await walk(store, ROOM, tier=None, snapshot_seq=model.seq) == before
        assert await walk(store, ROOM, tier=None, snapshot_seq=50) == at_50
        # Departures keep their first stamp: all of them predate 1_001.
        assert await store.prune(left_before_ms=1_001) == 68

    async def test_large_batch(self, store: Store) -> None:
        model = Roster()
        ops: list[RosterOp] = [model.join(viewer=True) for _ in range(12_345)]
        ops += [model.leave(f"PA_{i}") for i in range(0, 12_345, 2)]
        await store.commit(roster=ops, now_ms=1)
        assert await store.count(ROOM, tier="viewer", snapshot_seq=model.seq) == 6_172
        assert await store.count(ROOM, tier="viewer", snapshot_seq=12_345) == 12_345
        last = await store.page(ROOM, tier=None, limit=3, snapshot_seq=model.seq, after=(1, 12_340))
        assert [key for key, _info in last] == [(1, 12_342), (1, 12_344)]

    async def test_snapshots_and_checkpoint(self, store: Store) -> None:
        assert await store.load() == (0, {})
        await store.commit(
            roster=[RosterJoin("a", person(1, viewer=False), 3)],
            now_ms=1,
            snapshots={"a": (3, b"state-a"), "b": (2, b"state-b")},
            applied_seq=3,
        )
        assert await store.load() == (3, {"a": (3, b"state-a"), "b": (2, b"state-b")})
        await store.commit(roster=[], now_ms=2, snapshots={"a": (9, b"\x00new")}, applied_seq=9)
        await store.commit(roster=[], now_ms=3)  # nothing to do
        assert await store.load() == (9, {"a": (9, b"\x00new"), "b": (2, b"state-b")})
        await store.commit(roster=[], now_ms=4, applied_seq=11)
        assert (await store.load())[0] == 11
        if self.durable:
            again = await self.reopen(store)
            try:
                assert await again.load() == (11, {"a": (9, b"\x00new"), "b": (2, b"state-b")})
                assert await again.count("a", tier=None, snapshot_seq=3) == 1
            finally:
                await again.close()

    async def test_poisoned_items_are_kept_with_the_checkpoint_that_passed_them(
        self, store: Store
    ) -> None:
        assert await store.poisoned() == []
        first = PoisonedItem("x\\x00y", "roster_join", 3, "DataError: no NUL", 10, b"\x00raw")
        second = PoisonedItem("caf\\xe9", "snapshot", 4, "OverflowError: big", 11)
        await store.commit(roster=[], now_ms=1, poisoned=[first], applied_seq=3)
        await store.commit(roster=[], now_ms=2, poisoned=[second])
        assert await store.poisoned() == [first, second]
        assert await store.poisoned(limit=1) == [second]
        assert (await store.load())[0] == 3
        if self.durable:
            again = await self.reopen(store)
            try:
                assert await again.poisoned() == [first, second]
            finally:
                await again.close()

    async def test_deleted_rooms(self, store: Store) -> None:
        a, b = Roster("a"), Roster("b")
        ops: list[RosterOp] = [a.join(viewer=True) for _ in range(10)]
        ops += [b.join(viewer=True) for _ in range(10)]
        snaps = {"a": (10, b"a"), "b": (10, b"b")}
        await store.commit(roster=ops, now_ms=1, snapshots=snaps, applied_seq=10)
        with pytest.raises(ValueError):
            await store.commit(roster=[], now_ms=2, snapshots={"a": (11, b"")}, deleted_rooms=["a"])
        with pytest.raises(TypeError):
            await store.commit(roster=[], now_ms=2, deleted_rooms="a")
        last = a.leave("PA_0")  # a room's last ops may share the batch that deletes it
        await store.commit(roster=[last], now_ms=2, deleted_rooms=["a", "a", "ghost"])
        assert await store.load() == (10, {"b": (10, b"b")})
        assert await store.page("a", tier=None, limit=50, snapshot_seq=10, after=None) == []
        assert await store.count("a", tier=None, snapshot_seq=10) == 0
        assert keyed(await walk(store, "b", tier=None, snapshot_seq=10)) == b.visible(10)

    async def test_room_deleted_and_recreated(self, store: Store) -> None:
        """Deleting by sequence spares a new room of the same id, flushed before or with it."""
        old = Roster("a")
        await store.commit(
            roster=[old.join(viewer=True) for _ in range(5)], now_ms=1, snapshots={"a": (5, b"1")}
        )
        # Deleted at seq 6; re-created from seq 7 on; its first rows are flushed first.
        new = Roster("a")
        new.seq = 6
        await store.commit(roster=[new.join(viewer=True) for _ in range(3)], now_ms=2)
        await store.commit(
            roster=[old.join(viewer=False, seq=5), new.join(viewer=False)],  # stragglers
            now_ms=3,
            snapshots={"a": (10, b"2")},
            deleted_rooms={"a": 6},
            applied_seq=10,
        )
        assert await store.load() == (10, {"a": (10, b"2")})
        assert keyed(await walk(store, "a", tier=None, snapshot_seq=10)) == new.visible(10)
        await store.commit(roster=[], now_ms=4, deleted_rooms={"a": 9})  # snapshot is newer
        assert await store.load() == (10, {"a": (10, b"2")})
        assert await store.count("a", tier=None, snapshot_seq=10) == 1
        await store.commit(roster=[], now_ms=5, deleted_rooms={"a": 10})
        assert await store.load() == (10, {})

    async def test_rows_of_an_earlier_room_instance_are_not_paged_before_the_drop(
        self, store: Store
    ) -> None:
        """Until the deletion is committed, `from_seq` keeps the old instance's rows out."""
        old = Roster("a")
        await store.commit(roster=[old.join(viewer=v) for v in (True, False, True)], now_ms=1)
        new = Roster("a")
        new.seq = 5  # deleted at 4, opened again at 5 by the first join
        await store.commit(roster=[new.join(viewer=v) for v in (True, False)], now_ms=2)
        tiers: tuple[Tier | None, ...] = (None, "speaker", "viewer")
        for tier in tiers:
            every = keyed(await walk(store, "a", tier=tier, snapshot_seq=7))
            assert every == sorted(old.visible(7, tier) + new.visible(7, tier))
            rows: Page = []
            after: RowKey | None = None
            while page := await store.page(
                "a", tier=tier, limit=1, snapshot_seq=7, after=after, from_seq=5
            ):
                rows += page
                after = page[-1][0]
            assert keyed(rows) == new.visible(7, tier)

    async def test_prune(self, store: Store) -> None:
        model = Roster()
        await store.commit(roster=[model.join(viewer=True) for _ in range(10)], now_ms=100)
        await store.commit(roster=[model.leave("PA_0"), model.leave("PA_1")], now_ms=1_000)
        await store.commit(roster=[model.leave("PA_2")], now_ms=2_000)
        assert await store.prune(left_before_ms=1_000) == 0
        assert await store.prune(left_before_ms=1_001) == 2
        assert await store.prune(left_before_ms=1_001) == 0
        assert await store.count(ROOM, tier=None, snapshot_seq=10) == 8  # PA_2 still kept
        assert await store.prune(left_before_ms=10**12) == 1
        assert keyed(await walk(store, ROOM, tier=None, snapshot_seq=model.seq)) == (
            model.visible(model.seq)
        )
        # A replay from an old checkpoint re-inserts a pruned row, then its leave follows.
        replay: list[RosterOp] = [RosterJoin(ROOM, person(0, viewer=True), 1)]
        await store.commit(roster=replay, now_ms=3_000)
        assert await store.count(ROOM, tier=None, snapshot_seq=model.seq) == 8
        await store.commit(roster=[RosterLeave(ROOM, "PA_0", 1, 11)], now_ms=3_000)
        assert await store.count(ROOM, tier=None, snapshot_seq=model.seq) == 7
        assert await store.prune(left_before_ms=3_001) == 1

    async def test_update_is_reflected(self, store: Store) -> None:
        model = Roster()
        await store.commit(roster=[model.join(viewer=True) for _ in range(3)], now_ms=1)
        renamed = ParticipantInfo(
            sid="PA_1", id="user-1", name="Ada", is_viewer=True, metadata="m", attributes={"k": "v"}
        )
        await store.commit(
            roster=[
                RosterUpdate(ROOM, renamed, 2),
                RosterUpdate(ROOM, person(9, viewer=True), 2),  # no such row: nothing
                RosterUpdate(ROOM, person(0, viewer=True), 99),  # no such row: nothing
            ],
            now_ms=2,
        )
        rows = await walk(store, ROOM, tier="viewer", snapshot_seq=3)
        assert [info for _k, info in rows] == [
            person(0, viewer=True),
            renamed,
            person(2, viewer=True),
        ]

    async def test_ops_apply_in_order_within_a_batch(self, store: Store) -> None:
        info = person(1, viewer=True)
        ops: list[RosterOp] = [
            RosterLeave(ROOM, "PA_1", 5, 6),  # before its join: finds nothing
            RosterJoin(ROOM, info, 5),
            RosterUpdate(ROOM, person(1, viewer=True, name="first"), 5),
            RosterLeave(ROOM, "PA_1", 5, 8),
            RosterLeave(ROOM, "PA_1", 5, 9),  # already gone: the first leave stands
            RosterUpdate(ROOM, person(1, viewer=True, name="last"), 5),
            RosterJoin(ROOM, person(2, viewer=True), 5),  # same tier and seq: ignored
        ]
        await store.commit(roster=ops, now_ms=1)
        assert keyed(await walk(store, ROOM, tier=None, snapshot_seq=7)) == [((1, 5), "PA_1")]
        assert await walk(store, ROOM, tier=None, snapshot_seq=8) == []
        page = await store.page(ROOM, tier=None, limit=5, snapshot_seq=5, after=None)
        assert [i.name for _k, i in page] == ["last"]

    async def test_close_is_idempotent(self, store: Store) -> None:
        await store.close()
        await store.close()
        with pytest.raises(StoreClosed):
            await store.page(ROOM, tier=None, limit=5, snapshot_seq=1, after=None)
        with pytest.raises(StoreClosed):
            await store.commit(roster=[], now_ms=1)


class TestMemoryStore(StoreContract):
    durable = False

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        store = MemoryStore()
        yield store
        await store.close()


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        self.url = f"sqlite+aiosqlite:///{tmp_path / 'roster.db'}"
        store = await SqlStore.open(self.url)
        yield store
        await store.close()

    async def reopen(self, store: Store) -> Store:
        return await SqlStore.open(self.url)

    async def test_commit_is_atomic(self, store: Store) -> None:
        model = Roster()
        with pytest.raises(Exception):  # noqa: B017 - the driver's own overflow error
            await store.commit(
                roster=[model.join(viewer=True) for _ in range(10)],
                now_ms=1,
                snapshots={"r": (1, b"x")},
                applied_seq=2**70,
            )
        assert await store.load() == (0, {})
        assert await store.count(ROOM, tier=None, snapshot_seq=100) == 0


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set STAGECAST_TEST_POSTGRES_URL to run on PostgreSQL")
class TestPostgresStore(TestSqliteStore):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        assert PG_URL is not None
        async with fresh_postgres_database(PG_URL) as url:
            self.url = url
            store = await SqlStore.open(url)
            yield store
            await store.close()


# ------------------------------------------------------------------ SQL == memory, fuzzed

SIDS = st.sampled_from(("PA_1", "PA_1", "PA_1", "PA_2"))
ROOMS = ("a", "b")
Batch = tuple[list[RosterOp], list[str] | dict[str, int], int]
OP_ROOMS = st.sampled_from(("a", "a", "a", "b"))  # mostly one room: more collisions
op_strategy = st.one_of(
    st.builds(
        lambda room, sid, viewer, seq: RosterJoin(
            room, ParticipantInfo(sid=sid, id=sid.lower(), is_viewer=viewer), seq
        ),
        OP_ROOMS,
        SIDS,
        st.booleans(),
        st.integers(1, 2),
    ),
    st.builds(
        RosterLeave,
        OP_ROOMS,
        SIDS,
        st.integers(1, 2),
        st.integers(2, 4),
    ),
    st.builds(
        lambda room, sid, name, since: RosterUpdate(
            room, ParticipantInfo(sid=sid, id=sid.lower(), name=name), since
        ),
        OP_ROOMS,
        SIDS,
        st.sampled_from(("x", "y", "z")),
        st.integers(1, 2),
    ),
)
batch_strategy = st.tuples(
    st.lists(op_strategy, min_size=1, max_size=20),
    st.one_of(  # deleted rooms: all of a room, or up to the sequence that deleted it
        st.lists(st.sampled_from(ROOMS), max_size=1),
        st.dictionaries(st.sampled_from(ROOMS), st.integers(0, 4), max_size=1),
    ),
    st.integers(0, 3),  # prune threshold (now_ms of earlier batches is its index)
)


async def observe(store: Store) -> list[object]:
    seen: list[object] = [await store.load()]
    for room in ROOMS:
        for snapshot in range(5):
            seen.append(await walk(store, room, tier=None, snapshot_seq=snapshot, limit=3))
            seen.append(await store.count(room, tier="viewer", snapshot_seq=snapshot))
    return seen


async def run_both(batches: Iterable[Batch]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sql = await SqlStore.open(f"sqlite+aiosqlite:///{tmp}/fuzz.db")
        memory = MemoryStore()
        try:
            for now_ms, (ops, deleted, prune_before) in enumerate(batches):
                for store in (sql, memory):
                    await store.commit(
                        roster=ops, now_ms=now_ms, deleted_rooms=deleted, applied_seq=now_ms
                    )
                assert await sql.prune(left_before_ms=prune_before) == (
                    await memory.prune(left_before_ms=prune_before)
                )
                assert await observe(sql) == await observe(memory)
        finally:
            await sql.close()
            await memory.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(batch_strategy, min_size=1, max_size=4))
def test_sqlite_matches_memory(batches: list[Batch]) -> None:
    """Any op sequence, even ones the fold never emits, leaves both stores identical."""
    asyncio.run(run_both(batches))
