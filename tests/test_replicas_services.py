"""A statekeeper and an edge keep serving a room while NATS nodes die (3-node cluster, R3).

The statekeeper runs as its own process and the edge in this one, both given the whole
comma-separated URL list and ``--replicas 3``. A participant who joined before a node is
killed stays joined, with the same socket; a participant joining afterwards gets in.
Killed: first a node that does not lead the room log (then started again), then the
room log's leader.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

import stagecast
from edge.config import EdgeConfig
from edge.main import running_edge
from schemas import subjects
from stagecast.client import ConnectionState, Room
from tests.cluster_fixtures import NatsCluster, nats_cluster
from tests.fault_fixtures import OPTIONS
from tests.polling import eventually
from tests.stack_fixtures import API_KEY, API_SECRET, Events, mint

ROOM = "replicated"


@contextlib.contextmanager
def statekeeper(cluster: NatsCluster, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, STAGECAST_API_KEY=API_KEY, STAGECAST_API_SECRET=API_SECRET)
    database = f"sqlite+aiosqlite:///{tmp_path / 'statekeeper.db'}"
    with open(tmp_path / "statekeeper.log", "ab") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "stagecast.cli", "statekeeper"),
                *("--nats-url", cluster.url, "--database-url", database, "--replicas", "3"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def roster_is(api: stagecast.RoomService, *expected: str) -> None:
    """The room's participants are `expected`, once the statekeeper answers.

    A roster read first publishes the public events pending before it; while the events
    stream elects a leader (its node died) that waits, and the read times out: retried.
    """

    async def listed() -> bool:
        page = await api.list_participants(ROOM, limit=100)
        assert sorted(p.id for p in page.participants) == sorted(expected)
        return True

    await eventually(listed, timeout=30, interval=0.2, what=f"the roster {expected}")


async def test_a_room_is_served_across_node_losses(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path) as cluster:
        config = EdgeConfig(nats_url=cluster.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        rooms: list[Room] = []
        with statekeeper(cluster, tmp_path) as keeper:
            async with (
                running_edge(config) as url,
                stagecast.RoomService(url, API_KEY, API_SECRET) as api,
            ):

                async def healthy() -> bool:
                    async with httpx.AsyncClient(base_url=url, timeout=3.0) as http:
                        return (await http.get("/healthz")).status_code == 200

                await eventually(healthy, timeout=60, what="the edge's /healthz")

                async def join(identity: str) -> Room:
                    room = await stagecast.client.join(url, mint(identity, ROOM), options=OPTIONS)
                    rooms.append(room)
                    return room

                try:
                    alice = await join("alice")
                    events = Events(alice, "reconnecting", "disconnected")
                    leader = await cluster.wait_replicated(subjects.LOG_STREAM, 3)

                    follower = next(n for n in cluster.nodes if n != leader)
                    cluster.kill(follower)
                    await join("bob")
                    await roster_is(api, "alice", "bob")
                    await cluster.nodes[follower].start()
                    leader = await cluster.wait_replicated(subjects.LOG_STREAM, 3)

                    cluster.kill(leader)
                    killed_at = time.monotonic()
                    await join("carol")
                    joined_in = time.monotonic() - killed_at
                    await roster_is(api, "alice", "bob", "carol")
                    assert alice.connection_state is ConnectionState.CONNECTED
                    assert events.of("reconnecting") == []  # the same socket all along
                    assert events.of("disconnected") == []
                    assert keeper.poll() is None
                    async with httpx.AsyncClient(base_url=url, timeout=3.0) as http:
                        metrics = (await http.get("/metrics")).text
                    retried = [
                        line
                        for line in metrics.splitlines()
                        if line.startswith("stagecast_edge_append_")
                    ]
                    assert {line.split()[0] for line in retried} == {
                        "stagecast_edge_append_retries_total",
                        "stagecast_edge_append_retries_denied_total",
                        "stagecast_edge_append_outages_total",
                    }, metrics
                    print(f"\njoin after the leader kill took {joined_in:.2f} s; {retried}")
                finally:
                    for room in rooms:
                        with contextlib.suppress(Exception):
                            await room.leave()
