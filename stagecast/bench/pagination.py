"""Roster pagination latency: one page of a viewer roster walk, on SQLite and PostgreSQL.

Fills one room with 5 speakers and N viewers through `Store.commit`, the way the
statekeeper flushes its roster (batches of joins, a little churn), then times `page()`
calls of random walks pinned at the snapshot: first pages (speakers then viewers) and
pages deep inside the viewer tier. Figures are the p50 and p99 of one `page()` call.
PostgreSQL runs in a fresh database created on the given server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.models import ParticipantInfo, Tier
from stagecast.bench import Result, percentile
from statekeeper.outcomes import RosterJoin, RosterLeave
from statekeeper.store import RosterOp, RowKey, SqlStore

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SPEAKERS = 5
FLUSH_OPS = 5_000  # roster ops per commit, as the statekeeper batches them
CHURN = 0.02  # share of viewers that leave again before the snapshot
WALK_PAGES = 20  # pages read per random walk before a new one starts

console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options."""
    parser.add_argument("--viewers", type=int, default=100_000, help="viewers in the room")
    parser.add_argument("--page-size", type=int, default=50, help="rows per page")
    parser.add_argument("--pages", type=int, default=2000, help="page() calls timed per store")
    parser.add_argument(
        "--database-url", default=None, help="the embedded store (default: a temp SQLite file)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("STAGECAST_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="a PostgreSQL server to create a scratch database on ('' to skip)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the walks")


def roster_ops(room_id: str, viewers: int, seed: int) -> tuple[list[RosterOp], int]:
    """Joins of the speakers and viewers, then some departures; and the last sequence."""
    ops: list[RosterOp] = []
    for n in range(SPEAKERS + viewers):
        info = ParticipantInfo(
            sid=f"PA_{n:08x}", id=f"user-{n}", name=f"Person {n}", is_viewer=n >= SPEAKERS
        )
        ops.append(RosterJoin(room_id, info, n + 1))
    seq = len(ops)
    for since in random.Random(seed).sample(range(SPEAKERS + 1, seq + 1), int(viewers * CHURN)):
        seq += 1
        ops.append(RosterLeave(room_id, f"PA_{since - 1:08x}", since, seq))
    return ops, seq


async def fill(store: SqlStore, ops: list[RosterOp], label: str) -> float:
    """Commit the ops in flush-sized batches; returns rows per second."""
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{label}: filling", total=len(ops))
        for start in range(0, len(ops), FLUSH_OPS):
            batch = ops[start : start + FLUSH_OPS]
            await store.commit(roster=batch, now_ms=1, applied_seq=start + len(batch))
            progress.advance(task, len(batch))
    return len(ops) / (time.perf_counter() - started)


async def sample_pages(
    store: SqlStore, room_id: str, snapshot: int, args: argparse.Namespace, label: str
) -> list[float]:
    """Time `args.pages` page() calls along random walks; milliseconds per call."""
    rng = random.Random(args.seed)
    last_viewer_seq = SPEAKERS + args.viewers
    samples: list[float] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{label}: paging", total=args.pages)
        while len(samples) < args.pages:
            tier: Tier | None = rng.choice([None, "viewer"])
            after: RowKey | None = None  # a first page, one walk in five
            if rng.random() >= 0.2:
                after = (1, rng.randrange(SPEAKERS, last_viewer_seq + 1))
            for _ in range(min(WALK_PAGES, args.pages - len(samples))):
                started = time.perf_counter()
                page = await store.page(
                    room_id, tier=tier, limit=args.page_size, snapshot_seq=snapshot, after=after
                )
                samples.append((time.perf_counter() - started) * 1000)
                progress.advance(task)
                if len(page) < args.page_size:
                    break
                after = page[-1][0]
    return samples


async def bench_store(url: str, label: str, args: argparse.Namespace) -> list[Result]:
    """Fill, sample and clean up one store; the results carry `label` in their names."""
    room_id = f"bench-{uuid.uuid4().hex[:8]}"
    ops, snapshot = roster_ops(room_id, args.viewers, args.seed)
    store = await SqlStore.open(url)
    try:
        rate = await fill(store, ops, label)
        total = await store.count(room_id, tier=None, snapshot_seq=snapshot)
        await store.page(
            room_id, tier=None, limit=args.page_size, snapshot_seq=snapshot, after=None
        )
        samples = await sample_pages(store, room_id, snapshot, args, label)
        await store.commit(roster=[], now_ms=2, deleted_rooms=[room_id])
    finally:
        await store.close()
    note = f"{total} rows visible, {args.page_size}/page, {len(samples)} calls"
    console.print(
        f"{label}: {rate:,.0f} rows/s filled; page p50 {percentile(samples, 50):.2f} ms, "
        f"p99 {percentile(samples, 99):.2f} ms"
    )
    return [
        Result(f"page_p50_ms_{label}", percentile(samples, 50), "ms", note),
        Result(f"page_p99_ms_{label}", percentile(samples, 99), "ms", note),
        Result(f"fill_rows_per_s_{label}", rate, "1/s", f"batches of {FLUSH_OPS}"),
    ]


@asynccontextmanager
async def scratch_postgres(base_url: str) -> AsyncIterator[str | None]:
    """A fresh database on the server of `base_url` (dropped after), or None if unreachable."""
    url = make_url(base_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    name = f"stagecast_bench_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        try:
            async with asyncio.timeout(10), admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            console.print(f"[yellow]PostgreSQL skipped:[/] {url.host}: {type(exc).__name__}")
            yield None
            return
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def run(args: argparse.Namespace) -> list[Result]:
    """Run the suite on the embedded store, then on PostgreSQL when one answers."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="stagecast-bench-") as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'roster.db'}"
        label = "postgres" if make_url(url).get_backend_name() == "postgresql" else "sqlite"
        results += await bench_store(url, label, args)
    if args.postgres_url:
        async with scratch_postgres(args.postgres_url) as pg_url:
            if pg_url is not None:
                results += await bench_store(pg_url, "postgres", args)
    else:
        console.print("PostgreSQL skipped: no --postgres-url")
    return results
