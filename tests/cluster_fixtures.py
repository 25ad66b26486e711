"""A real 3-node nats-server cluster with JetStream, on free ports, for replication tests.

``async with nats_cluster(tmp_path) as cluster:`` starts three `NatsServer` processes named
``n1``..``n3``, each with its own store dir, routed to each other (``--cluster``,
``--routes``), and waits until JetStream answers on all of them (a meta leader is elected).
`cluster.url` is the comma-separated URL list services take; `kill(name)` is SIGKILL (a
node loss); `stream_leader` / `wait_replicated` read the cluster's view of a stream.

Client ports are picked by the servers; route ports are found free just before the start
(a route port must be known to the other nodes' ``--routes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from processes.natscluster import free_ports
from processes.natsserver import NatsServer
from tests.polling import eventually

CLUSTER_NAME = "stagecast-test"


@dataclasses.dataclass
class NatsCluster:
    """Three routed nats-server nodes with JetStream (see the module docstring)."""

    nodes: dict[str, NatsServer]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what ``--nats-url`` takes)."""
        return ",".join(node.url for node in self.nodes.values())

    async def wait_meta_ready(self, timeout: float = 30.0) -> str:
        """Wait until the meta leader sees every running node current; the leader's name.

        JetStream answers on every node as soon as a meta leader exists, but places an R3
        stream only once the leader has heard from enough peers ("no suitable peers")."""
        running = self.running()

        async def ready() -> str:
            async with httpx.AsyncClient(timeout=2.0) as http:
                for name in running:
                    jsz = (await http.get(f"{self.nodes[name].monitor_url}/jsz")).json()
                    meta = jsz.get("meta_cluster") or {}
                    if meta.get("leader") != name:
                        continue
                    current = [p for p in meta.get("replicas") or [] if p.get("current")]
                    assert len(current) == len(running) - 1, f"{len(current)} current peers"
                    return name
            raise AssertionError("no meta leader yet")

        return await eventually(ready, timeout=timeout, interval=0.1, what="the meta cluster")

    def running(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.running]

    def kill(self, name: str) -> None:
        """SIGKILL node `name` (a machine loss)."""
        self.nodes[name].kill()

    async def client(self) -> NATS:
        """A test client on every running node, reconnecting quickly."""
        return await nats.connect(
            servers=[self.nodes[n].url for n in self.running()],
            connect_timeout=2,
            reconnect_time_wait=0.1,
            max_reconnect_attempts=-1,
        )

    async def stream_leader(self, stream: str) -> str | None:
        """The name of the node leading `stream` now (None during an election)."""
        nc = await self.client()
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
        except (nats.errors.Error, TimeoutError):
            return None
        finally:
            await nc.close()
        return info.cluster.leader if info.cluster is not None else None

    async def wait_replicated(self, stream: str, replicas: int, timeout: float = 30.0) -> str:
        """Wait until `stream` has a leader and `replicas - 1` current followers; the leader."""
        nc = await self.client()
        try:
            js = nc.jetstream(timeout=2)

            async def replicated() -> str:
                info = await js.stream_info(stream)
                cluster = info.cluster
                assert cluster is not None and cluster.leader, "no leader"
                current = [p for p in cluster.replicas or [] if p.current and not p.offline]
                assert len(current) >= replicas - 1, f"{len(current)} current followers"
                return str(cluster.leader)

            return await eventually(replicated, timeout=timeout, interval=0.1, what=stream)
        finally:
            await nc.close()


@contextlib.asynccontextmanager
async def nats_cluster(tmp_path: Path, size: int = 3) -> AsyncIterator[NatsCluster]:
    """Start a `size`-node cluster under `tmp_path`; stop it afterwards."""
    names = [f"n{i + 1}" for i in range(size)]
    route_ports = free_ports(size)
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
    nodes = {
        name: NatsServer(
            tmp_path / name,
            start_timeout=60.0,
            extra_args=[
                *("-n", name),
                *("--cluster_name", CLUSTER_NAME),
                *("--cluster", f"nats://127.0.0.1:{port}"),
                *("--routes", routes),
            ],
        )
        for name, port in zip(names, route_ports, strict=True)
    }
    try:
        # Together: JetStream answers on a node only once a meta leader has its quorum.
        await asyncio.gather(*(node.start() for node in nodes.values()))
        cluster = NatsCluster(nodes)
        await cluster.wait_meta_ready()
        yield cluster
    finally:
        await asyncio.gather(*(node.stop() for node in nodes.values()), return_exceptions=True)


__all__ = ["NatsCluster", "free_ports", "nats_cluster"]
