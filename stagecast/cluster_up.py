"""`stagecast up --cluster`: the `compose.yaml` topology as processes on one machine.

Three nats-server nodes (JetStream, routed to each other, the room log and buckets on all
three: ``--replicas 3``), two statekeepers sharing `partitions` log partitions through
leases over one PostgreSQL database (required), two edges and two forwarders. As with
`stagecast up`, each start makes a fresh NKey per role, every node is configured with the
roles' public keys and permissions, and each child gets its own role's seed.

The statekeepers start first and the edges only once every partition has an owner: the
first statekeeper creates the log stream with its partitions (fixed at creation). Then the
edges' ``/healthz`` and the forwarders' first heartbeat are waited for, and `table()` shows
every service with its PID, ports and health. `stop()` stops the children in reverse
order, then the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from nats.aio.client import Client as NATS

from processes.children import CLI, until_stopped_or_exited
from processes.natscluster import NatsCluster
from roomlog.connect import connect
from roomlog.natslink import NatsLink
from roomlog.roles import Role
from stagecast.cluster_cli import lease_owners
from stagecast.up import Stack, UpConfig, log

READY_OWNER = "statekeeper ready owner="
"""The line a leasing statekeeper prints when it has started (its owner id follows)."""


class DatabaseRequired(SystemExit):
    """`--cluster` without a PostgreSQL `--database-url`: several statekeepers share one."""

    def __init__(self, given: str | None) -> None:
        reason = "none was given" if not given else "it is not PostgreSQL"
        super().__init__(
            "stagecast up --cluster needs --database-url (or STAGECAST_DATABASE_URL) of a "
            f"PostgreSQL database shared by its two statekeepers ({reason}), e.g. "
            "postgresql+asyncpg://user:password@127.0.0.1:5432/stagecast"
        )
        self.given = given


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterConfig:
    """What `stagecast up --cluster` runs (the `compose.yaml` topology by default)."""

    database_url: str
    port: int = 7880
    """The first edge's port; the others follow."""
    data_dir: Path = Path(".stagecast-cluster")
    nodes: int = 3
    statekeepers: int = 2
    edges: int = 2
    forwarders: int = 2
    partitions: int = 8
    replicas: int = 3
    lease_ttl: float = 2.0
    api_key: str = "devkey"
    api_secret: str = "devsecret"
    dev: bool = True
    edge_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.database_url.startswith("postgresql"):
            raise DatabaseRequired(self.database_url)
        if self.replicas > self.nodes:
            raise SystemExit(f"--replicas {self.replicas} needs as many NATS nodes")


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceRow:
    """One line of the services table."""

    name: str
    pid: int | None
    ports: str
    health: str


class ClusterStack(Stack):
    """The running cluster: `cluster` (the NATS nodes) and the Stagecast children."""

    def __init__(self, config: ClusterConfig) -> None:
        super().__init__(
            UpConfig(
                port=config.port,
                data_dir=config.data_dir,
                database_url=config.database_url,
                edges=config.edges,
                forwarders=config.forwarders,
                api_key=config.api_key,
                api_secret=config.api_secret,
                dev=config.dev,
                edge_args=config.edge_args,
                replicas=config.replicas,
            )
        )
        self.cluster_config = config
        self.cluster: NatsCluster | None = None
        self._admin: NATS | None = None

    def _env(self, role: Role) -> dict[str, str]:
        env = super()._env(role)
        if role is Role.STATEKEEPER:  # not on the command line: it may hold a password
            env["STAGECAST_DATABASE_URL"] = self.cluster_config.database_url
        return env

    def names(self) -> list[str]:
        """Each child's name (``statekeeper-0``, ``edge-1``...), by index in `children`."""
        return [log_path.stem for _args, log_path, _role in self._commands]

    def index_of(self, name: str) -> int:
        """The index in `children` of the child called `name`."""
        return self.names().index(name)

    async def start(self, *, log=print) -> None:  # type: ignore[no-untyped-def]
        config = self.cluster_config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        nats_dir = config.data_dir / "nats"
        authorization = self._make_credentials(nats_dir / "credentials")
        admin = self._credentials[Role.ADMIN]
        self.cluster = NatsCluster(
            nats_dir, config.nodes, config=authorization, probe_options=admin.connect_options()
        )
        await self.cluster.start()
        self.nats_url = self.cluster.url
        log(f"nats-server  {config.nodes} nodes: {self.nats_url}")
        cli = list(CLI)
        for i in range(config.statekeepers):
            if i == 1:  # the first one has created the streams: no two creating them at once
                await self.wait_statekeeper_ready(0)
            self._spawn(
                [
                    *cli,
                    "statekeeper",
                    *("--partitions", str(config.partitions)),
                    *("--replicas", str(config.replicas)),
                    *("--leases", "on", "--lease-ttl", str(config.lease_ttl)),
                    *("--metrics-port", "0"),  # any free port: the ready line names it
                ],
                config.data_dir / f"statekeeper-{i}.log",
                Role.STATEKEEPER,
            )
        await self.wait_partitions_owned()
        for i in range(config.edges):
            port = config.port + i
            args = [*cli, "edge", "--port", str(port)]
            if config.dev:
                args.append("--dev")
            args += config.edge_args
            self._spawn(args, config.data_dir / f"edge-{i}.log", Role.EDGE)
            self.edge_urls.append(f"http://127.0.0.1:{port}")
        await self.start_forwarders(cli)
        await self.wait_healthy()

    async def admin(self) -> NATS:
        """This stack's own NATS connection (the admin role), made on first use."""
        if self._admin is None:
            self._admin = await connect(
                self.nats_url,
                name="stagecast-up",
                link=NatsLink("stagecast-up", log),
                role=Role.ADMIN.value,
                auth=self.auth_for(Role.ADMIN),
            )
        return self._admin

    async def owners(self) -> dict[int, str]:
        """Partition -> the owner id holding its lease now (read from the leases bucket)."""
        js = (await self.admin()).jetstream(timeout=5)
        return await lease_owners(js, self.cluster_config.partitions)

    async def wait_statekeeper_ready(self, index: int, timeout: float = 60.0) -> str:
        """Wait until child `index` (a statekeeper) says it is ready; its owner id."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (owner := self.statekeeper_owner(index)) is None:
            self._check_children()
            if loop.time() > deadline:
                raise RuntimeError(f"statekeeper {index} not ready after {timeout} s")
            await asyncio.sleep(0.1)
        return owner

    async def wait_partitions_owned(self, timeout: float = 60.0) -> None:
        """Wait until every partition's lease is held, shared out among the statekeepers
        (each holding its even share), so no partition changes hands just after the start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        partitions = self.cluster_config.partitions
        keepers = [i for i, name in enumerate(self.names()) if name.startswith("statekeeper")]
        share = partitions // max(1, len(keepers))
        held: dict[int, str] = {}
        while loop.time() < deadline:
            self._check_children()
            with contextlib.suppress(Exception):  # no bucket yet, or an election
                held = await self.owners()
            owners = [self.statekeeper_owner(i) for i in keepers]
            shares = [sum(1 for o in held.values() if o == owner) for owner in owners]
            if len(held) >= partitions and min(shares, default=0) >= share:
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(
            f"{len(held)} of {partitions} partitions have an owner after {timeout} s, not "
            f"shared out; see the statekeeper logs in {self.cluster_config.data_dir}"
        )

    def statekeeper_owner(self, index: int) -> str | None:
        """The owner id child `index` (a statekeeper) announced in its log, if any yet."""
        ready = self._statekeeper_ready(index)
        return ready[0] if ready else None

    def statekeeper_metrics(self, index: int) -> str | None:
        """Where child `index` (a statekeeper) serves `/metrics` (``host:port``), if known."""
        ready = self._statekeeper_ready(index)
        return ready[1] if ready else None

    def _statekeeper_ready(self, index: int) -> tuple[str, str | None] | None:
        """(owner id, metrics address) from the last ready line in child `index`'s log."""
        _args, log_path, _role = self._commands[index]
        found = None
        with contextlib.suppress(OSError):
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith(READY_OWNER):  # the last start's
                    owner, *rest = line.removeprefix(READY_OWNER).split()
                    fields = dict(f.split("=", 1) for f in rest if "=" in f)
                    found = (owner, fields.get("metrics"))
        return found

    async def table(self) -> list[ServiceRow]:
        """Every service with its PID, ports and health, NATS nodes first."""
        rows: list[ServiceRow] = []
        assert self.cluster is not None
        for name, node in self.cluster.nodes.items():
            health = "healthy" if await self.cluster.healthy(name) else "down"
            ports = f"{node.port} (http {node.http_port})" if node.running else "-"
            rows.append(ServiceRow(f"nats-{name}", node.pid, ports, health))
        owners: dict[int, str] = {}
        with contextlib.suppress(Exception):
            owners = await self.owners()
        async with httpx.AsyncClient(timeout=2.0) as http:
            for i, (name, child) in enumerate(zip(self.names(), self.children, strict=True)):
                alive = child.poll() is None
                pid = child.pid if alive else None
                ports, health = "-", "running" if alive else f"exited {child.returncode}"
                if alive and name.startswith("statekeeper"):
                    owner = self.statekeeper_owner(i)
                    mine = sorted(p for p, o in owners.items() if o == owner)
                    health = f"holds partitions {','.join(map(str, mine)) or 'none'}"
                    metrics = self.statekeeper_metrics(i)
                    if metrics is not None:
                        ports = f"metrics {metrics.rsplit(':', 1)[1]}"
                elif alive and name.startswith("edge"):
                    url = self.edge_urls[int(name.split("-")[1])]
                    ports = url.rsplit(":", 1)[1]
                    try:
                        answer = await http.get(f"{url}/healthz")
                        health = "healthy" if answer.status_code == 200 else "unhealthy"
                    except httpx.HTTPError:
                        health = "down"
                elif alive and name.startswith("forwarder"):
                    ports = "udp (per connection)"
                    health = "heartbeat seen"
                rows.append(ServiceRow(name, pid, ports, health))
        return rows

    async def stop(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None
        await super().stop()
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster = None


def render_table(rows: list[ServiceRow]) -> list[str]:
    """The services table's lines."""
    lines = [f"  {'service':<14} {'pid':>8}  {'ports':<22} health"]
    for r in rows:
        pid = str(r.pid) if r.pid is not None else "-"
        lines.append(f"  {r.name:<14} {pid:>8}  {r.ports:<22} {r.health}")
    return lines


def say(line: str) -> None:
    print(line, flush=True)


async def run_cluster(config: ClusterConfig, out: Callable[[str], None] = say) -> int:
    """Run the cluster until SIGINT/SIGTERM; return the exit status."""
    stack = ClusterStack(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stack.start(log=lambda line: out(line))
    except BaseException:
        await stack.stop()
        raise
    out(f"Stagecast cluster ready at {' '.join(stack.edge_urls)}")
    for line in render_table(await stack.table()):
        out(line)
    out(f"  api key/secret  {config.api_key} / {config.api_secret}")
    admin = stack.auth_for(Role.ADMIN)
    if admin is not None and admin.creds is not None:
        out(f"  nats admin key  {admin.creds}  (stagecast cluster status --nats-creds ...)")
    sys.stdout.flush()
    try:
        crashed = await until_stopped_or_exited(stop, stack.children)
    finally:
        out("Stopping Stagecast...")
        await stack.stop()
    if crashed:
        print("a service exited unexpectedly; see the logs in the data dir", file=sys.stderr)
        return 1
    return 0
