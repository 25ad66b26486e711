"""What a statekeeper refuses at start, as `stagecast statekeeper` processes: a second one
beside a running one on SQLite, and a partition count the log was not created with."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from processes.natsserver import NatsServer
from tests.test_store import PG_URL, fresh_postgres_database

ENV = {**os.environ, "STAGECAST_API_KEY": "key", "STAGECAST_API_SECRET": "s3cret-s3cret"}


async def statekeeper(
    nats_url: str, tmp_path: Path, name: str, *args: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "stagecast.cli", "statekeeper", "--nats-url", nats_url),
        *("--database-url", f"sqlite+aiosqlite:///{tmp_path / name}.db", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )


async def ready(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    return await asyncio.wait_for(proc.stdout.readline(), 30)


async def refusal(proc: asyncio.subprocess.Process) -> str:
    """The exit status is not 0; what the process said on stderr."""
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode not in (0, None)
    return err.decode(errors="replace")


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 20)


async def test_a_second_statekeeper_on_sqlite_is_refused_and_the_first_goes_on(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    first = await statekeeper(nats_server.url, tmp_path, "first")
    assert (await ready(first)).startswith(b"statekeeper ready seq=")
    second = await statekeeper(nats_server.url, tmp_path, "second")
    said = await refusal(second)
    assert "several statekeepers must share one PostgreSQL database" in said
    await asyncio.sleep(1.0)  # a few announcement rounds: the first is not refused
    assert first.returncode is None
    await stop(first)
    assert first.returncode == 0
    # once the first has gone, a statekeeper starts again on the same NATS
    again = await statekeeper(nats_server.url, tmp_path, "second")
    assert (await ready(again)).startswith(b"statekeeper ready seq=")
    await stop(again)


async def test_another_partition_count_than_the_logs_is_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    first = await statekeeper(nats_server.url, tmp_path, "first", "--partitions", "2")
    assert (await ready(first)).startswith(b"statekeeper ready seq=")
    await stop(first)
    other = await statekeeper(nats_server.url, tmp_path, "first", "--partitions", "4")
    said = await refusal(other)
    assert "--partitions 4" in said and "fixed when the stream is created" in said


async def test_a_second_leasing_statekeeper_on_sqlite_is_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    first = await statekeeper(nats_server.url, tmp_path, "first", "--leases", "on")
    assert (await ready(first)).startswith(b"statekeeper ready owner=")
    second = await statekeeper(nats_server.url, tmp_path, "second", "--leases", "on")
    assert (await ready(second)).startswith(b"statekeeper ready owner=")  # then it looks
    said = await refusal(second)
    assert "several statekeepers must share one PostgreSQL database" in said
    assert first.returncode is None
    await stop(first)


@pytest.mark.postgres
async def test_a_leasing_statekeeper_beside_one_without_leases_is_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    if not PG_URL:
        pytest.skip("set STAGECAST_TEST_POSTGRES_URL to run on PostgreSQL")
    first = await statekeeper(nats_server.url, tmp_path, "first")  # SQLite: no leases
    assert (await ready(first)).startswith(b"statekeeper ready seq=")
    async with fresh_postgres_database(PG_URL) as url:
        second = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "stagecast.cli", "statekeeper"),
            *("--nats-url", nats_server.url, "--database-url", url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=ENV,
        )
        said = await refusal(second)
    assert "runs without leases" in said
    await stop(first)
