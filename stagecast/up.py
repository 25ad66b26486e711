"""`stagecast up`: the whole system on one machine, as supervised child processes.

Starts a private nats-server (unless given `--nats-url`), one statekeeper on SQLite (or
`--database-url`), N edges, M media forwarders and, when an endpoint is configured, the
webhook sender (`stagecast webhooks`, its URLs and secrets passed in its environment);
waits until every forwarder's first heartbeat arrived and every edge's `/healthz` answers 200
(with forwarders: once the statekeeper knows one, so a publish right after the ready line
succeeds); prints the ready line and the dev credentials; on Ctrl-C or SIGTERM stops the
children in reverse order. Every child is started with a parent-death signal, so none
outlives `up`.

The private nats-server requires credentials: each start makes a fresh NKey per role
(`roomlog.roles`), writes the seeds readable by this user only under
``<data dir>/nats/credentials/``, configures the server with the roles' public keys and
permissions, and hands each child its own role's seed (``STAGECAST_NATS_CREDS``). With
`--nats-url`, every child gets that URL and the given `nats_auth` as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from edge.counts import CPU_SHARE
from processes.children import CLI, spawn_child, stop_child, until_stopped_or_exited
from processes.natsserver import NatsServer
from roomlog.connect import (
    ENV_CREDS,
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    NatsAuth,
    connect,
    redact_url,
)
from roomlog.natslink import NatsLink
from roomlog.roles import Role, RoleUser, authorization_config, new_nkey_user, write_secret
from schemas.codec import SchemaError, decode
from schemas.media import ForwarderHeartbeat
from schemas.subjects import FORWARDER_HEARTBEAT

log = logging.getLogger("stagecast.up")
CHILD_ROLES = (Role.STATEKEEPER, Role.EDGE, Role.FORWARDER, Role.ADMIN, Role.AGENT)
"""The roles `stagecast up` makes credentials for (admin: its own checks; agent: for the
agent workers a developer starts beside it, printed on the ready line); `Role.WEBHOOK`
too when a webhook endpoint is configured."""
NATS_CLIENT_VARS = frozenset(
    ("STAGECAST_NATS_URL", ENV_CREDS, ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY)
)
"""What a child reads to reach NATS: set from this stack only, never inherited."""


@dataclasses.dataclass(frozen=True, slots=True)
class UpConfig:
    port: int = 7880
    data_dir: Path = Path(".stagecast")
    nats_url: str | None = None
    nats_auth: NatsAuth | None = None
    """Files for `nats_url` (creds, TLS), passed to every child; unused without it."""
    database_url: str | None = None
    edges: int = 1
    forwarders: int = 1
    api_key: str = "devkey"
    api_secret: str = "devsecret"
    dev: bool = True
    edge_args: tuple[str, ...] = ()
    """More `stagecast edge` flags for every edge (data budgets, say)."""
    replicas: int = 1
    """Least replicas of the log streams; more than 1 needs `nats_url` of a cluster."""
    webhook_env: dict[str, str] = dataclasses.field(default_factory=dict)
    """``STAGECAST_WEBHOOK_URL``/``_SECRET`` for the webhook sender; empty: none started."""
    webhook_args: tuple[str, ...] = ()
    """Its filter and horizon flags."""


def counts_share(edges: int, cores: int | None = None) -> float:
    """Each of `edges` edges' share of a core for counts delivery during joins, so that
    together they take at most `CPU_SHARE` of each of this host's cores (`edge.counts`):
    the default share while there are no more edges than cores."""
    cores = cores or os.cpu_count() or 1
    return min(CPU_SHARE, CPU_SHARE * cores / max(1, edges))


class Stack:
    """The running children of `stagecast up` (also used by benchmarks)."""

    def __init__(self, config: UpConfig) -> None:
        self.config = config
        self.nats: NatsServer | None = None
        self.nats_url = config.nats_url or ""
        self.children: list[subprocess.Popen[bytes]] = []
        self._commands: list[tuple[list[str], Path, Role]] = []
        """Each child's command line, log and role, by index in `children` (`respawn`)."""
        self._credentials: dict[Role, NatsAuth] = {}
        """The private server's per-role credentials (empty with `--nats-url`)."""
        self.edge_urls: list[str] = []
        self.forwarder_ids: list[str] = []

    @property
    def database_url(self) -> str:
        if self.config.database_url:
            return self.config.database_url
        return f"sqlite+aiosqlite:///{(self.config.data_dir / 'statekeeper.db').resolve()}"

    def auth_for(self, role: Role) -> NatsAuth | None:
        """The NATS credential files a client of `role` connects to this stack's NATS with."""
        return self._credentials.get(role, self.config.nats_auth)

    def _env(self, role: Role) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in NATS_CLIENT_VARS}
        if role is Role.WEBHOOK:
            env.update(self.config.webhook_env)
        env["STAGECAST_API_KEY"] = self.config.api_key
        env["STAGECAST_API_SECRET"] = self.config.api_secret
        env["STAGECAST_NATS_URL"] = self.nats_url  # not on the command line: it may hold a password
        auth = self.auth_for(role)
        if auth is not None:
            env.update(auth.env())
        return env

    def _make_credentials(self, directory: Path) -> str:
        """Fresh NKeys for every role in `directory` (0600); the server's authorization."""
        users: list[RoleUser] = []
        roles = (*CHILD_ROLES, Role.WEBHOOK) if self.config.webhook_env else CHILD_ROLES
        for role in roles:
            seed, public = new_nkey_user()
            path = write_secret(directory / f"{role.value}.nk", seed + "\n")
            self._credentials[role] = NatsAuth(creds=path)
            users.append(RoleUser(role, nkey=public))
        return authorization_config(users)

    async def start(self, *, log=print) -> None:  # type: ignore[no-untyped-def]
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.nats_url:
            if self.config.replicas > 1:
                raise SystemExit(
                    f"--replicas {self.config.replicas} needs --nats-url of a NATS cluster: "
                    "the private nats-server of `stagecast up` holds one replica"
                )
            nats_dir = self.config.data_dir / "nats"
            authorization = self._make_credentials(nats_dir / "credentials")
            admin = self._credentials[Role.ADMIN]
            self.nats = NatsServer(
                nats_dir, config=authorization, probe_options=admin.connect_options()
            )
            await self.nats.start()
            self.nats_url = self.nats.url
            log(f"nats-server  {self.nats_url} (credentials in {nats_dir / 'credentials'})")
        cli = list(CLI)
        self._spawn(
            [
                *cli,
                "statekeeper",
                "--database-url",
                self.database_url,
                "--replicas",
                str(self.config.replicas),
            ],
            self.config.data_dir / "statekeeper.log",
            Role.STATEKEEPER,
        )
        for i in range(self.config.edges):
            port = self.config.port + i
            args = [*cli, "edge", "--port", str(port)]
            if self.config.dev:
                args.append("--dev")
            if self.config.forwarders > 0:
                args.append("--require-forwarder")  # ready means a publish would succeed
            if "--counts-cpu-share" not in self.config.edge_args:
                args += ["--counts-cpu-share", f"{counts_share(self.config.edges):.4f}"]
            args += self.config.edge_args
            self._spawn(args, self.config.data_dir / f"edge-{i}.log", Role.EDGE)
            self.edge_urls.append(f"http://127.0.0.1:{port}")
        await self.start_forwarders(cli)
        if self.config.webhook_env:
            self._spawn(
                [*cli, "webhooks", *self.config.webhook_args],
                self.config.data_dir / "webhooks.log",
                Role.WEBHOOK,
            )
        await self.wait_healthy()

    async def start_forwarders(self, cli: list[str], timeout: float = 60.0) -> None:
        """Start the forwarders and wait for each one's first heartbeat (its readiness)."""
        if self.config.forwarders < 1:
            return
        heard: set[str] = set()

        async def on_heartbeat(msg: Any) -> None:
            try:
                beat = decode(msg.data)
            except SchemaError:
                return
            if isinstance(beat, ForwarderHeartbeat) and not beat.stopping:
                heard.add(beat.forwarder_id)

        nc = await connect(
            self.nats_url,
            name="stagecast-up",
            link=NatsLink("stagecast-up", log),
            role=Role.ADMIN.value,
            auth=self.auth_for(Role.ADMIN),
        )
        try:
            await nc.subscribe(FORWARDER_HEARTBEAT, cb=on_heartbeat)
            await nc.flush()
            for i in range(self.config.forwarders):
                forwarder_id = f"FW_{i}_{secrets.token_urlsafe(6)}"
                self._spawn(
                    [*cli, "forwarder", "--id", forwarder_id],
                    self.config.data_dir / f"forwarder-{i}.log",
                    Role.FORWARDER,
                )
                self.forwarder_ids.append(forwarder_id)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not heard.issuperset(self.forwarder_ids):
                self._check_children()
                if loop.time() > deadline:
                    missing = sorted(set(self.forwarder_ids) - heard)
                    raise RuntimeError(f"no heartbeat from forwarder(s) {missing} in {timeout} s")
                await asyncio.sleep(0.1)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    def _spawn(self, args: list[str], log_path: Path, role: Role) -> subprocess.Popen[bytes]:
        child = spawn_child(args, env=self._env(role), log_path=log_path)
        self.children.append(child)
        self._commands.append((args, log_path, role))
        return child

    def kill(self, index: int) -> None:
        """SIGKILL child `index` (0: the statekeeper, 1..: the edges) and reap it: a crash."""
        child = self.children[index]
        if child.poll() is None:
            child.kill()
        child.wait()

    def respawn(self, index: int) -> subprocess.Popen[bytes]:
        """Start child `index` again with the same command line (after `kill`)."""
        args, log_path, role = self._commands[index]
        child = spawn_child(args, env=self._env(role), log_path=log_path)
        self.children[index] = child
        return child

    def _check_children(self) -> None:
        for child in self.children:
            if child.poll() is not None:
                raise RuntimeError(
                    f"a child exited with {child.returncode} during start; "
                    f"see the logs in {self.config.data_dir}"
                )

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every edge's /healthz answers 200: NATS and the statekeeper are up and,
        with forwarders, the statekeeper knows one (a join, publish and subscribe succeed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reason = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0) as http:
            for url in self.edge_urls:
                while True:
                    self._check_children()
                    try:
                        response = await http.get(f"{url}/healthz")
                        if response.status_code == 200:
                            break
                        reason = f"{response.status_code} {response.text.strip()[:200]}"
                    except httpx.HTTPError as exc:
                        reason = f"{type(exc).__name__}"
                    if loop.time() > deadline:
                        raise RuntimeError(f"{url}/healthz never answered 200: {reason}")
                    await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for child in reversed(self.children):
            await stop_child(child)
        self.children.clear()
        self._commands.clear()
        if self.nats is not None:
            await self.nats.stop()
            self.nats = None


def command_name() -> str:
    """How to run `stagecast` from here: its name when it is on PATH, else its path
    (after `make up` it is `.venv/bin/stagecast`, not on PATH)."""
    script = Path(sys.executable).parent / "stagecast"
    found = shutil.which("stagecast")
    if found is not None and Path(found).resolve() == script.resolve():
        return "stagecast"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


async def run_up(config: UpConfig) -> int:
    """Run the stack until SIGINT/SIGTERM; return the exit status."""
    stack = Stack(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stack.start()
    except BaseException:
        await stack.stop()
        raise
    url = stack.edge_urls[0]
    print(f"Stagecast ready at {url}", flush=True)
    if config.dev:
        print(f"  demo page       {url}/  (dev mode: the page mints its own tokens)", flush=True)
    print(f"  api key/secret  {config.api_key} / {config.api_secret}", flush=True)
    print(f"  nats            {redact_url(stack.nats_url)}", flush=True)
    admin = stack.auth_for(Role.ADMIN)
    if stack.nats is not None and admin is not None and admin.creds is not None:
        print(f"  nats admin key  {admin.creds}  (nats --nkey ...)", flush=True)
    agent = stack.auth_for(Role.AGENT)
    if stack.nats is not None and agent is not None and agent.creds is not None:
        print(f"  nats agent key  {agent.creds}  (agent workers: --nats-creds)", flush=True)
    if stack.forwarder_ids:
        print(f"  forwarders      {' '.join(stack.forwarder_ids)}", flush=True)
    if config.webhook_env:
        print("  webhooks        sending (log: webhooks.log in the data dir)", flush=True)
    print(f"  try             {command_name()} token --room demo --identity alice", flush=True)
    try:
        crashed = await until_stopped_or_exited(stop, stack.children)
    finally:
        print("Stopping Stagecast...", flush=True)
        await stack.stop()
    if crashed:
        print("a service exited unexpectedly; see the logs in the data dir", file=sys.stderr)
        return 1
    return 0
