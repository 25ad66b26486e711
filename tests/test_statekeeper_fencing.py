"""Two statekeepers never both act on a partition: every write a lease lets through is
witnessed with the lease's revision, one statekeeper's renewals are made to fail while it
goes on folding, and per partition the revisions never go back in time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from statekeeper.cluster import running_leased
from statekeeper.errors import FencedOut
from statekeeper.leases import Fence, LeaseTiming
from statekeeper.main import StatekeeperConfig
from statekeeper.service import Tuning
from statekeeper.sql_store import SqlStore
from tests.polling import eventually
from tests.test_statekeeper_takeover import PARTITIONS, _owner_rows, join, room_in
from tests.test_store import PG_URL, fresh_postgres_database

pytestmark = pytest.mark.postgres

FAST = Tuning(roster_flush_ms=20, snapshot_every_ms=200, count_tick_ms=10)
TIMING = LeaseTiming(ttl=1.0, renew_every=0.2, margin=0.3)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    if not PG_URL:
        pytest.skip("set STAGECAST_TEST_POSTGRES_URL to run on PostgreSQL")
    async with fresh_postgres_database(PG_URL) as url:
        yield url


class RenewalsFail:
    """The leases bucket of a statekeeper whose renewals time out (its link to the
    bucket is cut); everything else goes through."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def update(self, *args: Any, **kwargs: Any) -> int:
        await asyncio.sleep(0.05)
        raise nats.errors.TimeoutError


async def test_two_statekeepers_never_write_for_one_partition_at_once(
    nats_server: NatsServer, nc: NATS, postgres_url: str
) -> None:
    journal: list[tuple[float, int, str, int]] = []

    def witness(partition: int, owner: str, revision: int) -> None:
        journal.append((time.monotonic(), partition, owner, revision))

    def config(owner: str) -> StatekeeperConfig:
        return StatekeeperConfig(
            nats_server.url,
            postgres_url,
            "s3cret",
            partitions=PARTITIONS,
            tuning=FAST,
            leases=True,
            lease_timing=TIMING,
            owner_id=owner,
            witness=witness,
        )

    room_log = RoomLog(nc.jetstream(), partitions=PARTITIONS)
    rooms = [room_in(p) for p in range(PARTITIONS)]
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_leased(config("sk-a")))
        b = await stack.enter_async_context(running_leased(config("sk-b")))
        await eventually(
            lambda: len(a.held()) == 2 and len(b.held()) == 2, timeout=15, what="a 2 + 2 split"
        )
        stop = asyncio.Event()

        async def traffic() -> None:
            i = 0
            while not stop.is_set() and i < 400:  # bounded: ~8 s at most
                for room_id in rooms:
                    await room_log.append(join(room_id, f"w{i}", viewer=True), f"{room_id}:w{i}")
                i += 1
                await asyncio.sleep(0.02)

        load = asyncio.create_task(traffic())
        await asyncio.sleep(0.5)
        taken_from_a = a.held()
        a.leasing.kv = RenewalsFail(a.leasing.kv)  # a folds on, but cannot renew
        await eventually(
            lambda: set(taken_from_a) <= set(b.held()), timeout=10, what="b takes a's partitions"
        )
        await asyncio.sleep(0.5)
        stop.set()
        await load

    for p in range(PARTITIONS):
        writes = sorted((at, rev, owner) for at, part, owner, rev in journal if part == p)
        revisions = [rev for _at, rev, _owner in writes]
        assert revisions == sorted(revisions), f"partition {p}: writes of an older lease came later"
        owners_by_revision = {rev: owner for _at, rev, owner in writes}
        assert len(set(owners_by_revision.values())) <= len(owners_by_revision)
    for p in taken_from_a:  # not vacuous: both wrote for the partitions that changed hands
        assert {owner for _at, part, owner, _rev in journal if part == p} == {"sk-a", "sk-b"}


async def test_a_holder_paused_inside_its_write_does_not_hold_the_next_one_back(
    postgres_url: str,
) -> None:
    """The old holder froze (SIGSTOP) between the statements of a write, holding the row
    lock its claim of `partition_owners` took: PostgreSQL ends its session after the idle
    timeout, so the new holder's write goes through, and the old one's is lost."""
    far = time.monotonic() + 600
    old = await SqlStore.open(postgres_url, idle_in_transaction_ms=500)
    new = await SqlStore.open(postgres_url, idle_in_transaction_ms=500)
    try:
        await old.scoped(1, Fence(1, "sk-old", 5, far)).commit(roster=[], now_ms=0, applied_seq=1)
        frozen = await old._sql._engine.connect()  # the old holder's own session
        await frozen.begin()
        await frozen.execute(
            text("UPDATE partition_owners SET revision = 5 WHERE partition_id = 1")
        )  # ... and it stops here, inside the transaction, with the row locked
        fenced = new.scoped(1, Fence(1, "sk-new", 9, far))
        await asyncio.wait_for(fenced.commit(roster=[], now_ms=0, applied_seq=2), timeout=10)
        with pytest.raises(DBAPIError):  # woken: its session is gone, nothing it did stays
            await frozen.execute(text("SELECT 1"))
        with contextlib.suppress(Exception):
            await frozen.close()
        rows = await _owner_rows(postgres_url)
        assert rows[1] == ("sk-new", 9)
        with pytest.raises(FencedOut):  # and a write of the old lease is refused
            await old.scoped(1, Fence(1, "sk-old", 5, far)).commit(
                roster=[], now_ms=0, applied_seq=3
            )
    finally:
        await old.close()
        await new.close()
