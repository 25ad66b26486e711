"""`stagecast up --cluster`: the compose topology as processes, joined through an edge."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from access.tokens import generate_token
from schemas.models import Grant
from stagecast.bench.stormhost import free_port_block
from stagecast.client import ConnectOptions, join
from stagecast.server_api import RoomService
from tests.polling import eventually
from tests.test_store import PG_URL, fresh_postgres_database

KEY, SECRET = "clusterkey", "cluster-test-secret-" + "x" * 16
SPEAKER = Grant(can_publish=True, can_subscribe=True, can_publish_data=True)


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
    env.update(STAGECAST_API_KEY=KEY, STAGECAST_API_SECRET=SECRET)
    return env


def test_without_a_postgresql_database_it_says_so_and_exits_non_zero(tmp_path: Path) -> None:
    for extra in ([], ["--database-url", f"sqlite+aiosqlite:///{tmp_path}/x.db"]):
        done = subprocess.run(
            [
                *(sys.executable, "-m", "stagecast.cli", "up", "--cluster"),
                *("--data-dir", str(tmp_path), *extra),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=cli_env(),
        )
        assert done.returncode != 0
        assert "stagecast up --cluster needs --database-url" in done.stderr
        assert not (tmp_path / "nats").exists()  # nothing was started


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    if not PG_URL:
        pytest.skip("set STAGECAST_TEST_POSTGRES_URL to run on PostgreSQL")
    async with fresh_postgres_database(PG_URL) as url:
        yield url


def table_rows(lines: list[str]) -> dict[str, list[str]]:
    """The services table of the output: name -> [pid, ports..., health...]."""
    rows: dict[str, list[str]] = {}
    for line in lines:
        words = line.split()
        if line.startswith("  ") and words[0].startswith(
            ("nats-", "statekeeper-", "edge-", "forwarder-")
        ):
            rows[words[0]] = words[1:]
    return rows


@pytest.mark.postgres
async def test_the_cluster_starts_serves_a_room_and_stops_in_order(
    tmp_path: Path, postgres_url: str
) -> None:
    port = free_port_block(2)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "stagecast.cli", "up", "--cluster"),
        *("--data-dir", str(tmp_path / "cluster"), "--port", str(port)),
        *("--database-url", postgres_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=(tmp_path / "stderr.log").open("wb"),
        env=cli_env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not lines or not lines[-1].startswith("  nats admin key"):
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, (lines, (tmp_path / "stderr.log").read_text())
            lines.append(line.decode().rstrip())
        rows = table_rows(lines)
        assert sorted(rows) == [
            "edge-0",
            "edge-1",
            "forwarder-0",
            "forwarder-1",
            "nats-n1",
            "nats-n2",
            "nats-n3",
            "statekeeper-0",
            "statekeeper-1",
        ], lines
        pids = {name: int(row[0]) for name, row in rows.items()}
        for name in ("nats-n1", "nats-n2", "nats-n3", "edge-0", "edge-1"):
            assert rows[name][-1] == "healthy", lines
        held = [rows[f"statekeeper-{i}"][-1].split(",") for i in range(2)]
        assert sorted(int(p) for part in held for p in part) == list(range(8)), lines
        assert rows["edge-1"][1] == str(port + 1)
        exported: list[int] = []  # each statekeeper's /metrics: the partitions it holds
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(2):
                row = rows[f"statekeeper-{i}"]
                assert row[1] == "metrics", lines
                text = (await http.get(f"http://127.0.0.1:{row[2]}/metrics")).text
                samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
                exported += [
                    int(s.labels["partition"])
                    for s in samples
                    if s.name == "stagecast_partition_owner"
                ]
                assert {
                    s.labels["stream"]: s.value
                    for s in samples
                    if s.name == "stagecast_stream_replicas"
                } == {"STAGECAST_LOG": 3, "STAGECAST_EVENTS": 3}, text
        assert sorted(exported) == list(range(8)), exported

        nats_url = lines[0].split()[-1]
        creds = next(line.split()[3] for line in lines if line.startswith("  nats admin key"))
        status = await asyncio.to_thread(
            subprocess.run,
            [
                *(sys.executable, "-m", "stagecast.cli", "cluster", "status"),
                *("--nats-url", nats_url, "--nats-creds", creds),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
        )
        assert status.returncode == 0, status.stdout + status.stderr
        report = status.stdout.splitlines()
        partitions = report[report.index("partitions") + 2 : report.index("services")]
        assert [int(line.split()[0]) for line in partitions] == list(range(8)), report
        assert len({line.split()[1] for line in partitions}) == 2  # both statekeepers hold some
        services = [line.split()[0] for line in report[report.index("services") + 1 :]]
        assert services.count("edge") == 2 and services.count("forwarder") == 2, report

        sockets = [f"ws://127.0.0.1:{port + i}/rtc" for i in range(2)]
        options = ConnectOptions(connect_timeout=15.0, request_timeout=10.0)
        rooms = []
        for i, identity in enumerate(("alice", "bob")):
            token = generate_token(
                KEY, SECRET, room_id="together", participant_id=identity, grant=SPEAKER
            )
            rooms.append(await join([sockets[i]], token, options=options))
        try:

            async def bob_seen() -> bool:
                return "bob" in rooms[0].remote_participants

            await eventually(bob_seen, timeout=30, what="alice sees bob through the other edge")
            async with RoomService(f"http://127.0.0.1:{port}", KEY, SECRET) as api:

                async def listed() -> list[str]:
                    page = await api.list_participants("together", limit=10)
                    return sorted(p.id for p in page.participants)

                found = await eventually(listed, timeout=20, what="the roster through the API")
                assert found == ["alice", "bob"]
        finally:
            await asyncio.gather(*(room.leave() for room in rooms), return_exceptions=True)

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 90) == 0
        rest = (await proc.stdout.read()).decode()
        assert "Stopping Stagecast..." in rest
        alive = [name for name, pid in pids.items() if psutil.pid_exists(pid)]
        alive = [n for n in alive if psutil.Process(pids[n]).status() != psutil.STATUS_ZOMBIE]
        assert alive == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
