"""The `stagecast` command: run the services, mint tokens, manage rooms, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roomlog.errors import NatsAuthRefused, NatsCredentialsError, NatsUnreachable

if TYPE_CHECKING:
    from edge.config import EdgeConfig
    from roomlog.connect import NatsAuth

DEV_KEY, DEV_SECRET = "devkey", "devsecret"
BENCH_SUITES = (
    "fold",
    "ingest",
    "recovery",
    "takeover",
    "pagination",
    "storm",
    "media",
    "dataflood",
    "faults",
    "webhooks",
    "streams",
)


def credentials() -> tuple[str, str]:
    """The api key and secret from the environment, or the dev pair (with a warning)."""
    key = os.environ.get("STAGECAST_API_KEY")
    secret = os.environ.get("STAGECAST_API_SECRET")
    if key and secret:
        return key, secret
    print(
        "warning: STAGECAST_API_KEY/STAGECAST_API_SECRET not set; using the dev pair "
        f"{DEV_KEY}/{DEV_SECRET}",
        file=sys.stderr,
    )
    return DEV_KEY, DEV_SECRET


def _nats_url(args: argparse.Namespace) -> str:
    url: str | None = args.nats_url or os.environ.get("STAGECAST_NATS_URL")
    if not url:
        raise SystemExit("--nats-url (or STAGECAST_NATS_URL) is required")
    return url


def _nats_auth(args: argparse.Namespace) -> NatsAuth:
    """The NATS credential and TLS files of `--nats-creds`/`--nats-tls-*` or the environment."""
    from roomlog.connect import NatsAuth

    return NatsAuth.from_env(
        creds=args.nats_creds,
        tls_ca=args.nats_tls_ca,
        tls_cert=args.nats_tls_cert,
        tls_key=args.nats_tls_key,
    )


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """`--nats-url` and the NATS credential flags (each also read from its env var)."""
    parser.add_argument(
        "--nats-url", default=None, help="nats://[user:password@]host:port[,...] or tls://..."
    )
    parser.add_argument(
        "--nats-creds", default=None, help="NKey seed or .creds file (STAGECAST_NATS_CREDS)"
    )
    parser.add_argument(
        "--nats-tls-ca", default=None, help="CA of the server's certificate (STAGECAST_NATS_TLS_CA)"
    )
    parser.add_argument(
        "--nats-tls-cert", default=None, help="client certificate (STAGECAST_NATS_TLS_CERT)"
    )
    parser.add_argument("--nats-tls-key", default=None, help="its key (STAGECAST_NATS_TLS_KEY)")


def _replicas(args: argparse.Namespace) -> int:
    """`--replicas` (or STAGECAST_REPLICAS, default 1): the streams' least replicas."""
    value = args.replicas if args.replicas is not None else os.environ.get("STAGECAST_REPLICAS")
    if value is None or value == "":
        return 1
    try:
        replicas = int(value)
    except ValueError:
        replicas = 0
    if not 1 <= replicas <= 5:
        raise SystemExit(f"--replicas (or STAGECAST_REPLICAS) must be 1 to 5, not {value!r}")
    return replicas


def _append_retry(args: argparse.Namespace) -> float:
    """`--append-retry` (or STAGECAST_APPEND_RETRY): seconds an append is retried."""
    from roomlog.retry import RETRY_DEADLINE

    value = args.append_retry
    if value is None:
        value = os.environ.get("STAGECAST_APPEND_RETRY") or RETRY_DEADLINE
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 120:
        raise SystemExit(
            f"--append-retry (or STAGECAST_APPEND_RETRY) must be 0 to under 120 s, not {value!r}"
        )
    return seconds


def _server_url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("STAGECAST_URL") or "http://127.0.0.1:7880")


# --------------------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    from stagecast.up import UpConfig, run_up
    from stagecast.webhooks_cli import webhook_child_args, webhook_child_env, webhook_endpoints
    from webhooks.errors import WebhookConfigError

    key, secret = credentials()
    try:  # checked here: a bad endpoint is a named error, not a child's crash
        webhook_endpoints(args)
        if args.webhook_horizon <= 0:
            raise WebhookConfigError("--webhook-horizon", "the retry horizon must be positive")
    except WebhookConfigError as exc:
        raise SystemExit(f"stagecast up: {exc}") from None
    config = UpConfig(
        port=args.port,
        data_dir=Path(args.data_dir),
        nats_url=args.nats_url,
        nats_auth=_nats_auth(args),
        database_url=args.database_url or os.environ.get("STAGECAST_DATABASE_URL"),
        edges=args.edges,
        forwarders=args.forwarders,
        replicas=_replicas(args),
        api_key=key,
        api_secret=secret,
        webhook_env=webhook_child_env(args),
        webhook_args=webhook_child_args(args),
    )
    return asyncio.run(run_up(config))


def cmd_statekeeper(args: argparse.Namespace) -> int:
    from roomlog.errors import StreamNotEnsured
    from statekeeper.leases import LeaseTiming
    from statekeeper.main import StatekeeperConfig, serve

    _, secret = credentials()
    database_url = (
        args.database_url
        or os.environ.get("STAGECAST_DATABASE_URL")
        or f"sqlite+aiosqlite:///{Path('.stagecast/statekeeper.db').resolve()}"
    )
    if database_url.startswith("sqlite"):
        Path(database_url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    if args.partitions < 1:
        raise SystemExit(f"--partitions must be at least 1, not {args.partitions}")
    leases = args.leases == "on" or (
        args.leases == "auto" and not database_url.startswith("sqlite")
    )
    try:
        timing = LeaseTiming(
            ttl=args.lease_ttl, renew_every=args.lease_ttl / 5, margin=args.lease_ttl / 4
        )
    except ValueError as exc:
        raise SystemExit(f"--lease-ttl: {exc}") from None
    config = StatekeeperConfig(
        nats_url=_nats_url(args),
        nats_auth=_nats_auth(args),
        database_url=database_url,
        api_secret=secret,
        partitions=args.partitions,
        owned=tuple(range(args.partitions)),
        leases=leases,
        lease_timing=timing,
        replicas=_replicas(args),
        append_retry=_append_retry(args),
    )
    try:
        asyncio.run(serve(config))
    except StreamNotEnsured as exc:  # --replicas beyond what this NATS holds, say
        raise SystemExit(f"stagecast statekeeper: {exc}") from None
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    from edge.main import serve

    key, secret = credentials()
    try:
        config = edge_config(args, key, secret)
    except ValueError as exc:
        raise SystemExit(f"stagecast edge: {exc}") from None
    asyncio.run(serve(config))
    return 0


def edge_config(args: argparse.Namespace, key: str, secret: str) -> EdgeConfig:
    """The `EdgeConfig` of ``stagecast edge``'s options (ValueError for bad limits)."""
    from edge.config import EdgeConfig

    return EdgeConfig(
        nats_url=_nats_url(args),
        nats_auth=_nats_auth(args),
        api_key=key,
        api_secret=secret,
        host=args.host,
        port=args.port,
        dev_mode=args.dev,
        require_forwarder=args.require_forwarder,
        data_bytes_per_s=args.data_bytes_per_s,
        data_burst_bytes=args.data_burst_bytes,
        room_data_bytes_per_s=args.room_data_bytes_per_s,
        room_data_burst_bytes=args.room_data_burst_bytes,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        join_deadline=args.join_deadline,
        http_read_timeout=args.http_read_timeout,
        replicas=_replicas(args),
    )


def cmd_forwarder(args: argparse.Namespace) -> int:
    from forwarder.main import serve
    from schemas.subjects import is_generated_id

    if args.id is not None and not is_generated_id(args.id):
        raise SystemExit(f"--id must be [A-Za-z0-9_-]+ (at most 256), not {args.id!r}")
    asyncio.run(
        serve(
            _nats_url(args),
            forwarder_id=args.id,
            heartbeat_interval=args.heartbeat,
            auth=_nats_auth(args),
        )
    )
    return 0


def cmd_agent_worker(args: argparse.Namespace) -> int:
    from stagecast.agents_cli import run_agent_worker

    key, secret = credentials()
    return run_agent_worker(args, _server_url(args), _nats_url(args), _nats_auth(args), key, secret)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from stagecast.webhooks_cli import cmd_webhooks as run

    key, secret = credentials()
    args.nats_auth = _nats_auth(args)
    return run(args, _nats_url(args), key, secret)


def cmd_token(args: argparse.Namespace) -> int:
    from access.tokens import ROOMLESS_MAX_TTL, generate_token
    from schemas.models import Grant

    key, secret = credentials()
    names = {
        "publish": "can_publish",
        "subscribe": "can_subscribe",
        "publish_data": "can_publish_data",
        "subscribe_data": "can_subscribe_data",
        "moderate": "can_moderate",
        "record": "can_record",
        "hls": "can_hls",
        "livestream": "can_livestream",
    }
    grant: Grant | None = None
    if args.grant is not None:
        wanted = {g.strip().replace("-", "_") for g in args.grant.split(",") if g.strip()}
        unknown = wanted - names.keys()
        if unknown:
            raise SystemExit(f"unknown grant(s): {', '.join(sorted(unknown))}")
        grant = Grant(**{field: name in wanted for name, field in names.items()})
    # No --grant: generate_token gives a --viewer token VIEWER_GRANT (no publishing, no data).
    ttl = args.ttl or (3600 if args.room else ROOMLESS_MAX_TTL)
    print(
        generate_token(
            key,
            secret,
            room_id=args.room,
            participant_id=args.identity,
            name=args.name,
            is_viewer=args.viewer,
            grant=grant,
            ttl=ttl,
        )
    )
    return 0


def cmd_rooms(args: argparse.Namespace) -> int:
    from stagecast.admin_cli import rooms

    status: int = asyncio.run(rooms(args, _server_url(args), *credentials()))
    return status


def cmd_participants(args: argparse.Namespace) -> int:
    from stagecast.admin_cli import participants

    status: int = asyncio.run(participants(args, _server_url(args), *credentials()))
    return status


def cmd_nats_auth(args: argparse.Namespace) -> int:
    """Print the nats-server ``authorization`` block for Stagecast's roles."""
    from roomlog.roles import Role, RoleUser, authorization_config, new_nkey_user, write_secret

    try:
        roles = [Role(name.strip()) for name in args.roles.split(",") if name.strip()]
    except ValueError as exc:
        raise SystemExit(f"stagecast nats-auth: {exc}; roles: {', '.join(Role)}") from None
    users: list[RoleUser] = []
    for role in roles:
        if args.nkeys is None:
            users.append(RoleUser.from_env_var(role))
            continue
        seed, public = new_nkey_user()
        path = write_secret(Path(args.nkeys) / f"{role.value}.nk", seed + "\n")
        print(f"# {role.value}: --nats-creds {path}", file=sys.stderr)
        users.append(RoleUser(role, nkey=public))
    print(authorization_config(users), end="")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from stagecast.cluster_cli import cluster_status

    status: int = asyncio.run(cluster_status(_nats_url(args), auth=_nats_auth(args)))
    return status


def bench_options(suite: str, argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    """A suite's module (imported only now) and its own options parsed from `argv`."""
    module: Any = importlib.import_module(f"stagecast.bench.{suite}")
    parser = argparse.ArgumentParser(prog=f"stagecast bench {suite}", description=module.__doc__)
    module.add_arguments(parser)
    options = parser.parse_args(argv)
    options.suite = suite
    return module, options


def cmd_bench(args: argparse.Namespace) -> int:
    """Parse the suite's own options and run it."""
    from stagecast.bench.report import run_suite

    module, options = bench_options(args.suite, args.options)
    status: int = asyncio.run(run_suite(module, options))
    return status


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from edge.config import EdgeConfig
    from stagecast.webhooks_cli import add_webhook_options

    parser = argparse.ArgumentParser(prog="stagecast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole system on this machine")
    up.add_argument("--port", type=int, default=7880)
    up.add_argument("--data-dir", default=".stagecast")
    add_nats_options(up)  # --nats-url: use this NATS instead of a private one
    add_webhook_options(up)  # an endpoint given: up starts `stagecast webhooks` too
    up.add_argument("--database-url", default=None)
    up.add_argument("--edges", type=int, default=1)
    up.add_argument("--forwarders", type=int, default=1)
    up.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="least replicas of the log streams (STAGECAST_REPLICAS; default 1, 3 in a cluster)",
    )
    up.set_defaults(func=cmd_up)

    sk = sub.add_parser("statekeeper", help="run one statekeeper")
    add_nats_options(sk)
    sk.add_argument("--database-url", default=None)
    sk.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("STAGECAST_PARTITIONS", "1")),
        help="room log partitions (fixed when the log stream is created; default 1)",
    )
    sk.add_argument(
        "--leases",
        choices=("auto", "on", "off"),
        default=os.environ.get("STAGECAST_LEASES", "auto"),
        help="share partitions with other statekeepers through leases "
        "(auto: on with PostgreSQL, off with SQLite)",
    )
    sk.add_argument("--lease-ttl", type=float, default=2.0, help="seconds a lease lasts unrenewed")
    sk.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="least replicas of the log streams (STAGECAST_REPLICAS; default 1, 3 in a cluster)",
    )
    sk.add_argument(
        "--append-retry",
        type=float,
        default=None,
        help="s an append is retried across a leader election (STAGECAST_APPEND_RETRY; 15)",
    )
    sk.set_defaults(func=cmd_statekeeper)

    edge = sub.add_parser("edge", help="run one edge (signaling and server API)")
    add_nats_options(edge)
    edge.add_argument("--host", default="127.0.0.1")
    edge.add_argument("--port", type=int, default=7880)
    edge.add_argument("--dev", action="store_true", help="dev mode (the page mints tokens)")
    edge.add_argument(
        "--require-forwarder",
        action="store_true",
        help="/healthz is 503 until the statekeeper knows a live media forwarder",
    )
    edge.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="least replicas of the log streams (STAGECAST_REPLICAS; default 1, 3 in a cluster)",
    )
    budgets = {
        "--data-bytes-per-s": "data bytes/s one session may send",
        "--data-burst-bytes": "data bytes one session may send at once",
        "--room-data-bytes-per-s": "data bytes/s a room carries (each edge enforces it)",
        "--room-data-burst-bytes": "data bytes a room carries at once",
    }
    defaults = {f.name: f.default for f in dataclasses.fields(EdgeConfig)}
    for flag, what in budgets.items():
        default = defaults[flag.removeprefix("--").replace("-", "_")]
        edge.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    edge.add_argument(
        "--max-connections", type=int, default=0, help="0: from RLIMIT_NOFILE, with headroom"
    )
    edge.add_argument(
        "--max-connections-per-address", type=int, default=0, help="0: --max-connections"
    )
    edge.add_argument("--join-deadline", type=float, default=10.0, help="s to send a join")
    edge.add_argument("--http-read-timeout", type=float, default=10.0, help="s per request")
    edge.set_defaults(func=cmd_edge)

    fwd = sub.add_parser("forwarder", help="run one media forwarder")
    add_nats_options(fwd)
    fwd.add_argument("--id", default=None, help="[A-Za-z0-9_-]+; default FW_<random>")
    fwd.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    fwd.set_defaults(func=cmd_forwarder)

    agent = sub.add_parser("agent-worker", help="take agent jobs and run an entrypoint in each")
    agent.add_argument("--url", default=None, help="an edge's URL (STAGECAST_URL)")
    add_nats_options(agent)
    from stagecast.agents_cli import add_agent_worker_options

    add_agent_worker_options(agent)
    agent.set_defaults(func=cmd_agent_worker)
    hooks = sub.add_parser("webhooks", help="POST public events, signed, to HTTP endpoints")
    add_nats_options(hooks)
    add_webhook_options(hooks)
    hooks.add_argument(
        "--webhook-retry-base", type=float, default=1.0, help="seconds before the first retry"
    )
    hooks.set_defaults(func=cmd_webhooks)

    token = sub.add_parser("token", help="mint a participant token")
    token.add_argument("--room", default=None, help="omit for a roomless (audience) token")
    token.add_argument("--identity", default=None, help="omit to let the edge generate one")
    token.add_argument("--name", default=None)
    token.add_argument("--viewer", action="store_true", help="audience tier (isViewer)")
    token.add_argument(
        "--grant", default=None, help="comma list: publish,subscribe,publish_data,..."
    )
    token.add_argument("--ttl", type=int, default=None, help="seconds")
    token.set_defaults(func=cmd_token)

    rooms = sub.add_parser("rooms", help="list, create or delete rooms")
    rooms.add_argument("action", choices=("list", "create", "delete"))
    rooms.add_argument("room", nargs="?")
    rooms.add_argument("--url", default=None)
    rooms.add_argument("--max-participants", type=int, default=0)
    rooms.add_argument("--livestream", action="store_true")
    rooms.set_defaults(func=cmd_rooms)

    parts = sub.add_parser("participants", help="list a room's participants")
    parts.add_argument("room")
    parts.add_argument("--tier", choices=("speaker", "viewer"), default=None)
    parts.add_argument("--limit", type=int, default=50)
    parts.add_argument("--all", action="store_true", help="walk every page")
    parts.add_argument("--url", default=None)
    parts.set_defaults(func=cmd_participants)

    auth = sub.add_parser(
        "nats-auth", help="print the nats-server authorization block for Stagecast's roles"
    )
    auth.add_argument(
        "--roles", default="edge,statekeeper,forwarder,webhook,agent,admin", help="comma list"
    )
    auth.add_argument(
        "--nkeys",
        metavar="DIR",
        default=None,
        help="a fresh NKey per role, its seed written to DIR/<role>.nk (default: passwords "
        "read by the server from $STAGECAST_NATS_<ROLE>_PASSWORD)",
    )
    auth.set_defaults(func=cmd_nats_auth)
    cluster = sub.add_parser("cluster", help="NATS JetStream status (read-only)")
    cluster.add_argument("action", choices=("status",))
    add_nats_options(cluster)
    cluster.set_defaults(func=cmd_cluster)

    bench = sub.add_parser("bench", help="run a benchmark suite", add_help=False)
    bench.add_argument("suite", choices=BENCH_SUITES)
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the suite's own options")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        status: int = args.func(args)
    except (NatsAuthRefused, NatsCredentialsError, NatsUnreachable) as exc:
        # Said in one line: retrying will not help, and a traceback hides the reason.
        print(f"stagecast {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return status


if __name__ == "__main__":
    sys.exit(main())
