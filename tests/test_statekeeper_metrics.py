"""The statekeeper's `/metrics` (`--metrics-port`), read from two `stagecast statekeeper`
processes sharing the partitions over one nats-server and one PostgreSQL database: each
partition shows on exactly one of them, with its owner, and after a kill the survivor's
shows them all; the log streams and the edges and forwarders heard show too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from schemas import subjects
from schemas.api import EdgeHeartbeat
from schemas.clock import now_ms
from schemas.codec import encode
from schemas.media import ForwarderHeartbeat
from tests.polling import eventually
from tests.test_statekeeper_takeover import PARTITIONS, TTL, join, owners, room_in
from tests.test_store import PG_URL, fresh_postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    if not PG_URL:
        pytest.skip("set STAGECAST_TEST_POSTGRES_URL to run on PostgreSQL")
    async with fresh_postgres_database(PG_URL) as url:
        yield url


class Keeper:
    """One `stagecast statekeeper --metrics-port 0` process: its owner id and /metrics."""

    def __init__(self, proc: asyncio.subprocess.Process, line: str) -> None:
        self.proc = proc
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        self.owner = fields["owner"]
        self.metrics_url = f"http://{fields['metrics']}/metrics"

    async def samples(self, name: str) -> list[dict[str, str | float]]:
        """Every sample of `name` on this statekeeper's /metrics: labels plus ``value``."""
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(self.metrics_url)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        found: list[dict[str, str | float]] = []
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if sample.name == name:
                    found.append({**sample.labels, "value": float(sample.value)})
        return found

    async def held(self) -> dict[int, str]:
        """Partition -> owner label, from `stagecast_partition_owner`."""
        return {
            int(s["partition"]): str(s["owner"])
            for s in await self.samples("stagecast_partition_owner")
            if s["value"] == 1
        }


async def start_keeper(nats_url: str, database_url: str, tmp_path: Path, name: str) -> Keeper:
    env = {**os.environ, "STAGECAST_API_KEY": "key", "STAGECAST_API_SECRET": "s3cret-s3cret"}
    log_path = tmp_path / f"{name}.log"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "stagecast.cli", "statekeeper", "--nats-url", nats_url),
        *("--database-url", database_url, "--partitions", str(PARTITIONS)),
        *("--lease-ttl", TTL, "--metrics-port", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=log_path.open("wb"),
        env=env,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert line.startswith("statekeeper ready owner="), (line, log_path.read_text())
    assert " metrics=127.0.0.1:" in line, line
    return Keeper(proc, line)


@contextlib.asynccontextmanager
async def two_keepers(
    server: NatsServer, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Keeper, Keeper]]:
    a = await start_keeper(server.url, database_url, tmp_path, "a")
    b = await start_keeper(server.url, database_url, tmp_path, "b")
    try:
        yield a, b
    finally:
        for k in (a, b):
            if k.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    k.proc.send_signal(signal.SIGCONT)
                    k.proc.terminate()
                try:
                    await asyncio.wait_for(k.proc.wait(), 15)
                except TimeoutError:
                    k.proc.kill()
                    await k.proc.wait()


async def test_each_partition_on_one_statekeepers_metrics_and_all_on_the_survivor_after_a_kill(
    nats_server: NatsServer, nc: NATS, postgres_url: str, tmp_path: Path
) -> None:
    room_log = RoomLog(nc.jetstream(), partitions=PARTITIONS)
    async with two_keepers(nats_server, postgres_url, tmp_path) as (a, b):

        async def split() -> tuple[dict[int, str], dict[int, str]] | None:
            held_a, held_b = await a.held(), await b.held()
            return (held_a, held_b) if len(held_a) == 2 and len(held_b) == 2 else None

        found = await eventually(split, timeout=20, interval=0.2, what="2 + 2 on /metrics")
        assert found is not None
        held_a, held_b = found
        assert set(held_a.values()) == {a.owner} and set(held_b.values()) == {b.owner}
        assert sorted([*held_a, *held_b]) == list(range(PARTITIONS))  # each exactly once
        bucket = await owners(nc)
        assert {**held_a, **held_b} == bucket  # what the leases bucket says

        for p in range(PARTITIONS):  # an event in every partition, then all folded
            room = room_in(p)
            await room_log.append(join(room, "speaker", viewer=False), f"{room}:speaker")
        last = await room_log.last_seq()

        async def folded(keeper: Keeper) -> bool:
            applied = await keeper.samples("stagecast_partition_applied_seq")
            lag = await keeper.samples("stagecast_partition_lag_events")
            caught_up = await keeper.samples("stagecast_partition_caught_up")
            return (
                len(applied) == len(lag) == len(caught_up) == 2
                and all(0 < float(s["value"]) <= last for s in applied)
                and all(s["value"] == 0 for s in lag)
                and all(s["value"] == 1 for s in caught_up)
            )

        await eventually(lambda: folded(a), timeout=15, interval=0.2, what="a folded")
        await eventually(lambda: folded(b), timeout=15, interval=0.2, what="b folded")

        streams = {
            str(s["stream"]): s["value"] for s in await a.samples("stagecast_stream_replicas")
        }
        assert streams == {subjects.LOG_STREAM: 1, subjects.EVENTS_STREAM: 1}
        leaders = await b.samples("stagecast_stream_has_leader")
        assert {str(s["stream"]): s["value"] for s in leaders} == {
            subjects.LOG_STREAM: 1,
            subjects.EVENTS_STREAM: 1,
        }
        log_last = await a.samples("stagecast_stream_last_seq")
        assert {"stream": subjects.LOG_STREAM, "value": last} in log_last

        edge = EdgeHeartbeat(edge_id="ED_metrics", at=now_ms(), sockets=17)
        forwarder = ForwarderHeartbeat(
            forwarder_id="FW_metrics", at=now_ms(), peer_connections=3, legs=5
        )

        async def heard() -> bool:
            await nc.publish(subjects.EDGE_HEARTBEAT, encode(edge))
            await nc.publish(subjects.FORWARDER_HEARTBEAT, encode(forwarder))
            sockets = await a.samples("stagecast_edge_load_sockets")
            legs = await a.samples("stagecast_forwarder_load_legs")
            return {"edge": "ED_metrics", "value": 17} in sockets and {
                "forwarder": "FW_metrics",
                "value": 5,
            } in legs

        await eventually(heard, timeout=10, interval=0.2, what="heartbeats on /metrics")

        b.proc.kill()  # SIGKILL: its leases lapse, the survivor takes every partition
        await b.proc.wait()

        async def all_on_a() -> bool:
            held = await a.held()
            caught_up = await a.samples("stagecast_partition_caught_up")
            return sorted(held) == list(range(PARTITIONS)) and all(
                s["value"] == 1 for s in caught_up
            )

        await eventually(all_on_a, timeout=20, interval=0.2, what="every partition on a")
        assert set((await a.held()).values()) == {a.owner}
        assert set((await owners(nc)).values()) == {a.owner}


async def test_metrics_listener_answers_only_get_metrics(
    nats_server: NatsServer, postgres_url: str, tmp_path: Path
) -> None:
    keeper = await start_keeper(nats_server.url, postgres_url, tmp_path, "solo")
    try:
        base = keeper.metrics_url.removesuffix("/metrics")
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"{base}/other")).status_code == 404
            assert (await http.post(keeper.metrics_url, content=b"x")).status_code == 404
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer

        taken = await start_keeper_failing(nats_server.url, postgres_url, int(port))
        assert "cannot serve /metrics on 127.0.0.1:" in taken, taken
    finally:
        keeper.proc.terminate()
        await asyncio.wait_for(keeper.proc.wait(), 15)


async def start_keeper_failing(nats_url: str, database_url: str, port: int) -> str:
    """Start a statekeeper whose /metrics port is taken; what it says as it exits."""
    env = {**os.environ, "STAGECAST_API_KEY": "key", "STAGECAST_API_SECRET": "s3cret-s3cret"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "stagecast.cli", "statekeeper", "--nats-url", nats_url),
        *("--database-url", database_url, "--partitions", str(PARTITIONS)),
        *("--lease-ttl", TTL, "--metrics-port", str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    return err.decode(errors="replace")
