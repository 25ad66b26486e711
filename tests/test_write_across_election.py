"""A client's write in flight across a room-log leader election reaches the user as no error.

3-node NATS cluster (R3), a statekeeper process, an edge in this process, SDK clients each
sending metadata updates one after another. The `STAGECAST_LOG` leader is killed: its
election (4-9 s in nats-server) outlasts the edge's 3 s action deadline, so the writes in
flight are refused `UNAVAILABLE` by the edge; the SDK sends each again with the same request
id (the edge appends it under the same message id) until it is acknowledged. No error
reaches the user's code, and every acknowledged update is in the log once as applied (a
copy stored past the action deadline is refused by the statekeeper, not applied).

The stream's leader is moved to the statekeeper's node first, so the kill cuts the
statekeeper's link too: a reply it sent just before is lost (when the kill lands between a
fold and its reply's delivery), and the edge asks for it again (`edge.awaited`). Before
that, the one request in flight at the kill timed out then (2 of 4 CI runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path

import httpx
import nats.errors

import stagecast
from edge.config import EdgeConfig
from edge.main import running_edge
from edge.metrics import sample_value
from roomlog.log import RoomLog
from schemas import subjects
from schemas.log import ACTION_DEADLINE_MS, MetadataSet
from stagecast.client import ConnectOptions, Room
from tests.cluster_fixtures import NatsCluster, nats_cluster
from tests.polling import eventually
from tests.reading import read
from tests.stack_fixtures import API_KEY, API_SECRET, mint
from tests.test_replicas_services import ROOM, statekeeper

log = logging.getLogger("tests.write_across_election")

WRITERS = 3
MAX_UPDATES = 600
"""Updates per writer at most (the loop's bound)."""
PACE = 0.03
"""Seconds between a writer's updates: under the edge's frame rate limit (50/s per socket,
`EdgeConfig.rate_per_s`), which an unpaced loop exceeds once acks come back within 10 ms
(a CI run saw half the updates of two writers refused `RateLimited`)."""
STATEKEEPER = "stagecast-statekeeper"
"""The statekeeper's NATS client name."""
AFTER_ELECTION = 5
"""Acknowledged updates per writer after the new leader's first ack, then the writers stop."""
OPTIONS = ConnectOptions(connect_timeout=15.0, request_timeout=15.0, join_retry_window=30.0)


@dataclasses.dataclass
class Writer:
    """One client's metadata updates: what was acknowledged, and what reached its code."""

    room: Room
    name: str
    acked: list[str] = dataclasses.field(default_factory=list)
    errors: list[BaseException] = dataclasses.field(default_factory=list)
    after_kill: int = 0

    async def run(self, killed: asyncio.Event, stop: asyncio.Event) -> None:
        for i in range(MAX_UPDATES):
            if stop.is_set():
                return
            value = f"{self.name}-{i}"
            try:
                await self.room.local_participant.set_metadata(value)
            except Exception as exc:  # what the user's code would see
                log.warning("%s: %r", value, exc)
                self.errors.append(exc)
                continue
            self.acked.append(value)
            if killed.is_set():
                self.after_kill += 1
            await asyncio.sleep(PACE)


async def connected_node(cluster: NatsCluster, client_name: str) -> str:
    """The node the NATS client named `client_name` is connected to (its /connz)."""

    async def found() -> str:
        async with httpx.AsyncClient(timeout=2.0) as http:
            for name in cluster.running():
                connz = (await http.get(f"{cluster.nodes[name].monitor_url}/connz")).json()
                if any(c.get("name") == client_name for c in connz.get("connections") or []):
                    return name
        raise AssertionError(f"{client_name} is on no node")

    return await eventually(found, timeout=30, what=client_name)


async def lead_from(cluster: NatsCluster, node: str) -> str:
    """Move the room log's leader to `node` (a step-down that prefers it); the leader."""
    nc = await cluster.client()
    try:
        for _ in range(10):
            leader = await cluster.wait_replicated(subjects.LOG_STREAM, 3)
            if leader == node:
                return leader
            request = json.dumps({"placement": {"preferred": node}}).encode()
            with contextlib.suppress(nats.errors.Error):
                await nc.request(
                    f"$JS.API.STREAM.LEADER.STEPDOWN.{subjects.LOG_STREAM}", request, timeout=5
                )
    finally:
        await nc.close()
    raise AssertionError(f"the room log's leader did not move to {node}")


async def test_metadata_updates_across_a_stream_leader_kill_see_no_error_and_apply_once(
    tmp_path: Path,
) -> None:
    async with nats_cluster(tmp_path) as cluster:
        with statekeeper(cluster, tmp_path) as keeper:
            await cluster.wait_replicated(subjects.LOG_STREAM, 3)
            # The statekeeper's node leads the stream, so the kill also cuts its link.
            leader = await lead_from(cluster, await connected_node(cluster, STATEKEEPER))
            # The edge's own NATS node survives: only the stream leader (and the
            # statekeeper's link) dies.
            survivors = ",".join(n.url for name, n in cluster.nodes.items() if name != leader)
            config = EdgeConfig(nats_url=survivors, api_key=API_KEY, api_secret=API_SECRET, port=0)
            async with running_edge(config) as url:

                async def healthy() -> bool:
                    async with httpx.AsyncClient(base_url=url, timeout=3.0) as http:
                        return (await http.get("/healthz")).status_code == 200

                await eventually(healthy, timeout=60, what="the edge's /healthz")
                writers = [
                    Writer(
                        await stagecast.client.join(url, mint(f"w{n}", ROOM), options=OPTIONS),
                        f"w{n}",
                    )
                    for n in range(WRITERS)
                ]
                killed, stop = asyncio.Event(), asyncio.Event()
                tasks = [asyncio.create_task(w.run(killed, stop)) for w in writers]
                try:
                    assert await cluster.wait_replicated(subjects.LOG_STREAM, 3) == leader
                    await eventually(
                        lambda: all(len(w.acked) >= 3 for w in writers), what="writes before"
                    )
                    cluster.kill(leader)
                    killed.set()
                    killed_at = time.monotonic()
                    await eventually(
                        lambda: (
                            all(w.after_kill >= AFTER_ELECTION for w in writers)
                            or all(t.done() for t in tasks)
                        ),
                        timeout=90,
                        what="writes after the election",
                    )
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(*tasks), 60)
                    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
                        metrics = (await http.get("/metrics")).text
                    print(
                        f"\nleader {leader} killed; writes after it for "
                        f"{time.monotonic() - killed_at:.1f} s; "
                        f"acked {[len(w.acked) for w in writers]}, "
                        f"errors {[len(w.errors) for w in writers]}; replies recovered "
                        f"{sample_value(metrics, 'stagecast_edge_replies_recovered_total')}, "
                        "late copies dropped "
                        f"{sample_value(metrics, 'stagecast_edge_reply_copies_dropped_total')}"
                    )
                    assert keeper.poll() is None
                finally:
                    stop.set()
                    for task in tasks:
                        task.cancel()
                    for w in writers:
                        with contextlib.suppress(Exception):
                            await w.room.leave()

        # Refusals are sent again and never reach the caller, and a reply lost with the
        # statekeeper's link is asked for again: no error at all. Without the resend each
        # client sees refusals; without the asking, a timeout when the statekeeper was on
        # the killed node.
        for w in writers:
            assert w.errors == [], w.errors
        assert all(w.after_kill >= AFTER_ELECTION for w in writers)

        nc = await cluster.client()
        try:
            room_log = RoomLog(nc.jetstream())
            last = await room_log.last_seq()
            async with room_log.reader(None, 1) as reader:
                records = await read(reader, last, max_wait=30.0)
        finally:
            await nc.close()
        applied: Counter[str] = Counter()
        for record in records:
            event = record.event
            if isinstance(event, MetadataSet) and record.stored_at - event.at <= ACTION_DEADLINE_MS:
                applied[event.metadata] += 1
        for w in writers:
            assert {value: applied[value] for value in w.acked} == dict.fromkeys(w.acked, 1)
