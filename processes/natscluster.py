"""Three (or more) routed `nats-server` processes with JetStream, on one machine.

`NatsCluster(store_dir)` builds nodes ``n1``..``nN``, each a `NatsServer` with its own
store dir under `store_dir`, named with ``-n``, routed to every other node (``--cluster``,
``--routes``), listening on 127.0.0.1 only. `start()` starts them together (JetStream
answers on a node only once a meta leader has its quorum) and waits until the meta leader
sees every node current, so an R3 stream can be placed at once. Client and monitoring
ports are picked by the servers; route ports are found free just before the start (each
node's ``--routes`` must name them).

`config` and `probe_options` are passed to every node (an ``authorization`` block and the
login the readiness probe uses). Used by `stagecast up --cluster` and `stagecast bench
chaos`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from processes.natsserver import NatsServer, NatsServerError

CLUSTER_NAME = "stagecast"
META_WAIT_S = 60.0


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]


class NatsCluster:
    """`size` routed nats-server nodes with JetStream (see the module docstring)."""

    def __init__(
        self,
        store_dir: Path,
        size: int = 3,
        *,
        config: str | None = None,
        probe_options: Mapping[str, Any] | None = None,
        name: str = CLUSTER_NAME,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least 1 node, not {size}")
        names = [f"n{i + 1}" for i in range(size)]
        route_ports = free_ports(size)
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
        self.nodes: dict[str, NatsServer] = {
            node: NatsServer(
                Path(store_dir) / node,
                start_timeout=META_WAIT_S,
                config=config,
                probe_options=probe_options,
                extra_args=[
                    *("-n", node),
                    *("--cluster_name", name),
                    *("--cluster", f"nats://127.0.0.1:{port}"),
                    *("--routes", routes),
                ],
            )
            for node, port in zip(names, route_ports, strict=True)
        }

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what ``--nats-url`` takes)."""
        return ",".join(node.url for node in self.nodes.values())

    def running(self) -> list[str]:
        """The names of the nodes whose process is alive."""
        return [name for name, node in self.nodes.items() if node.running]

    async def start(self) -> None:
        """Start every node together and wait for a meta leader with every node current."""
        try:
            await asyncio.gather(*(node.start() for node in self.nodes.values()))
            await self.wait_meta_ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL). Idempotent."""
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), return_exceptions=True)

    async def jsz(self, name: str) -> dict[str, Any]:
        """Node `name`'s `/jsz` monitoring answer."""
        async with httpx.AsyncClient(timeout=2.0) as http:
            answer: dict[str, Any] = (await http.get(f"{self.nodes[name].monitor_url}/jsz")).json()
            return answer

    async def healthy(self, name: str) -> bool:
        """Whether node `name` answers ``/healthz?js-enabled-only=true`` with 200."""
        node = self.nodes[name]
        if not node.running:
            return False
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                url = f"{node.monitor_url}/healthz?js-enabled-only=true"
                return (await http.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    async def meta_leader(self) -> str | None:
        """The meta leader's name, as a running node sees it (None during an election)."""
        for name in self.running():
            try:
                meta = (await self.jsz(name)).get("meta_cluster") or {}
            except (httpx.HTTPError, ValueError):
                continue
            leader = meta.get("leader")
            if leader:
                return str(leader)
        return None

    async def wait_meta_ready(self, timeout: float = META_WAIT_S) -> str:
        """Wait until the meta leader sees every running node current; the leader's name.

        JetStream answers on every node as soon as a meta leader exists, but places an R3
        stream only once the leader has heard from enough peers ("no suitable peers")."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reason = "no meta leader yet"
        while loop.time() < deadline:
            running = self.running()
            for name in running:
                try:
                    meta = (await self.jsz(name)).get("meta_cluster") or {}
                except (httpx.HTTPError, ValueError) as exc:
                    reason = f"{name}: {type(exc).__name__}"
                    continue
                if meta.get("leader") != name:
                    continue
                current = [p for p in meta.get("replicas") or [] if p.get("current")]
                if len(current) >= len(running) - 1:
                    return name
                reason = f"{len(current)} of {len(running) - 1} peers current"
            await asyncio.sleep(0.1)
        raise NatsServerError(f"the NATS cluster is not ready after {timeout} s: {reason}")


__all__ = ["NatsCluster", "free_ports"]
