"""The `stagecast` command: run the services, mint tokens, manage rooms, benchmark.

Over 500 lines on purpose: it is the one table of every subcommand and its flags (most of
it `build_parser`), read top to bottom; each command's work lives in its own module
(`stagecast.up`, `stagecast.cluster_up`, `stagecast.admin_cli`, the services' `main`s), and
the NATS options every service shares in `stagecast.cli_nats`.
"""

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
from stagecast.cli_format import URL_HELP, CommandParser, DefaultsFormatter
from stagecast.cli_nats import (
    add_nats_options,
    append_retry_option,
    nats_auth,
    nats_url,
    replicas_option,
)
from stagecast.credentials import credentials

if TYPE_CHECKING:
    from edge.config import EdgeConfig

BENCH_SUITES = (
    "fold",
    "ingest",
    "recovery",
    "takeover",
    "pagination",
    "storm",
    "stormclients",
    "media",
    "dataflood",
    "faults",
    "webhooks",
    "chaos",
    "whip",
    "streams",
    "dispatch",
    "natscost",
    "syscalls",
)


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
    if args.cluster:
        return cmd_up_cluster(args, key, secret)
    config = UpConfig(
        port=args.port,
        data_dir=Path(args.data_dir),
        nats_url=args.nats_url,
        nats_auth=nats_auth(args),
        database_url=args.database_url or os.environ.get("STAGECAST_DATABASE_URL"),
        edges=args.edges,
        forwarders=args.forwarders,
        replicas=replicas_option(args),
        api_key=key,
        api_secret=secret,
        webhook_env=webhook_child_env(args),
        webhook_args=webhook_child_args(args),
    )
    return asyncio.run(run_up(config))


def cmd_up_cluster(args: argparse.Namespace, key: str, secret: str) -> int:
    from stagecast.cluster_up import ClusterConfig, run_cluster

    if args.nats_url:
        raise SystemExit("stagecast up --cluster runs its own NATS nodes: drop --nats-url")
    config = ClusterConfig(
        database_url=args.database_url or os.environ.get("STAGECAST_DATABASE_URL") or "",
        port=args.port,
        data_dir=Path(args.data_dir if args.data_dir != ".stagecast" else ".stagecast-cluster"),
        replicas=replicas_option(args) if args.replicas is not None else 3,
        api_key=key,
        api_secret=secret,
    )
    return asyncio.run(run_cluster(config))


def cmd_statekeeper(args: argparse.Namespace) -> int:
    from roomlog.errors import StreamNotEnsured
    from statekeeper.errors import MetricsListenFailed
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
        nats_url=nats_url(args),
        nats_auth=nats_auth(args),
        database_url=database_url,
        api_secret=secret,
        partitions=args.partitions,
        owned=tuple(range(args.partitions)),
        leases=leases,
        lease_timing=timing,
        replicas=replicas_option(args),
        append_retry=append_retry_option(args),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    try:
        asyncio.run(serve(config))
    except (StreamNotEnsured, MetricsListenFailed) as exc:  # --replicas beyond this NATS, say
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
        nats_url=nats_url(args),
        nats_auth=nats_auth(args),
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
        counts_cpu_share=args.counts_cpu_share,
    )


def cmd_forwarder(args: argparse.Namespace) -> int:
    from forwarder.main import serve
    from schemas.subjects import is_generated_id

    if args.id is not None and not is_generated_id(args.id):
        raise SystemExit(f"--id must be [A-Za-z0-9_-]+ (at most 256), not {args.id!r}")
    asyncio.run(
        serve(
            nats_url(args),
            forwarder_id=args.id,
            heartbeat_interval=args.heartbeat,
            auth=nats_auth(args),
        )
    )
    return 0


def cmd_agent_worker(args: argparse.Namespace) -> int:
    from stagecast.agents_cli import run_agent_worker

    key, secret = credentials()
    return run_agent_worker(args, _server_url(args), nats_url(args), nats_auth(args), key, secret)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from stagecast.webhooks_cli import cmd_webhooks as run

    key, secret = credentials()
    args.nats_auth = nats_auth(args)
    return run(args, nats_url(args), key, secret)


def cmd_token(args: argparse.Namespace) -> int:
    from access.tokens import ROOMLESS_MAX_TTL, generate_token
    from schemas.models import Grant

    key, secret = credentials(warn=False)
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
    try:
        token = generate_token(
            key,
            secret,
            room_id=args.room,
            participant_id=args.identity,
            name=args.name,
            is_viewer=args.viewer,
            grant=grant,
            ttl=ttl,
        )
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"stagecast token: {exc}") from None
    print(token)
    return 0


def cmd_rooms(args: argparse.Namespace) -> int:
    from stagecast.admin_cli import rooms

    status: int = asyncio.run(rooms(args, _server_url(args), *credentials(warn=False)))
    return status


def cmd_participants(args: argparse.Namespace) -> int:
    from stagecast.admin_cli import participants

    status: int = asyncio.run(participants(args, _server_url(args), *credentials(warn=False)))
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

    status: int = asyncio.run(cluster_status(nats_url(args), auth=nats_auth(args)))
    return status


def bench_options(suite: str, argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    """A suite's module (imported only now) and its own options parsed from `argv`."""
    module: Any = importlib.import_module(f"stagecast.bench.{suite}")
    parser = argparse.ArgumentParser(
        prog=f"stagecast bench {suite}",
        description=module.__doc__,
        formatter_class=DefaultsFormatter,
    )
    module.add_arguments(parser)
    for action in parser._actions:  # a flag without help still says its default
        if not action.help and action.default not in (None, False, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"
    options = parser.parse_args(argv)
    options.suite = suite
    return module, options


def cmd_bench(args: argparse.Namespace) -> int:
    """Parse the suite's own options and run it."""
    from stagecast.bench.report import run_suite

    if args.bench_help or args.suite is None:
        parser: argparse.ArgumentParser = args.bench_parser
        if args.bench_help:
            parser.print_help()
            return 0
        parser.print_usage(sys.stderr)
        print("stagecast bench: a suite is required", file=sys.stderr)
        return 2

    module, options = bench_options(args.suite, args.options)
    status: int = asyncio.run(run_suite(module, options))
    return status


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from edge.config import EdgeConfig
    from stagecast.webhooks_cli import add_webhook_options

    parser = argparse.ArgumentParser(prog="stagecast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    up = sub.add_parser("up", help="run the whole system on this machine")
    up.add_argument("--port", type=int, default=7880, help="the first edge's HTTP port")
    up.add_argument("--data-dir", default=".stagecast", help="NATS, database and credentials")
    add_nats_options(up)  # --nats-url: use this NATS instead of a private one
    add_webhook_options(up)  # an endpoint given: up starts `stagecast webhooks` too
    up.add_argument(
        "--database-url", default=None, help="STAGECAST_DATABASE_URL; default SQLite in --data-dir"
    )
    up.add_argument("--edges", type=int, default=1, help="edges, on consecutive ports")
    up.add_argument("--forwarders", type=int, default=1, help="media forwarders")
    up.add_argument(
        "--cluster",
        action="store_true",
        help="3 NATS nodes, 2 statekeepers (needs --database-url of PostgreSQL), 2 edges, "
        "2 forwarders: compose.yaml as processes",
    )
    up.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="least replicas of the log streams (STAGECAST_REPLICAS; default 1, 3 in a cluster)",
    )
    up.set_defaults(func=cmd_up)

    sk = sub.add_parser("statekeeper", help="run one statekeeper")
    add_nats_options(sk)
    sk.add_argument(
        "--database-url",
        default=None,
        help="STAGECAST_DATABASE_URL; default SQLite in .stagecast/statekeeper.db",
    )
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
    env_port = os.environ.get("STAGECAST_METRICS_PORT")
    sk.add_argument(
        "--metrics-port",
        type=int,
        default=int(env_port) if env_port else None,
        help="serve Prometheus /metrics on this port (STAGECAST_METRICS_PORT; default off)",
    )
    sk.add_argument(
        "--metrics-host",
        default=os.environ.get("STAGECAST_METRICS_HOST", "127.0.0.1"),
        help="address of the /metrics listener (STAGECAST_METRICS_HOST; default 127.0.0.1)",
    )
    sk.set_defaults(func=cmd_statekeeper)

    edge = sub.add_parser("edge", help="run one edge (signaling and server API)")
    add_nats_options(edge)
    edge.add_argument("--host", default="127.0.0.1", help="address to listen on")
    edge.add_argument("--port", type=int, default=7880, help="HTTP and WebSocket port")
    edge.add_argument("--dev", action="store_true", help="dev mode (the page mints tokens)")
    edge.add_argument(
        "--require-forwarder",
        action="store_true",
        help="/healthz is 503 until the statekeeper knows a live media forwarder",
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
        edge.add_argument(flag, type=int, default=default, help=what)
    edge.add_argument(
        "--max-connections", type=int, default=0, help="0: from RLIMIT_NOFILE, with headroom"
    )
    edge.add_argument(
        "--max-connections-per-address", type=int, default=0, help="0: --max-connections"
    )
    edge.add_argument("--join-deadline", type=float, default=10.0, help="s to send a join")
    edge.add_argument(
        "--counts-cpu-share",
        type=float,
        default=defaults["counts_cpu_share"],
        help="share of a core counts delivery may take during joins (one edge per core: 0.25)",
    )
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
    token.add_argument("--name", default=None, help="display name")
    token.add_argument(
        "--viewer",
        action="store_true",
        help="audience tier (isViewer): subscribe only, no publishing, until promoted",
    )
    token.add_argument(
        "--grant",
        default=None,
        help="comma list of publish, subscribe, publish_data, subscribe_data, moderate, "
        "record, hls, livestream (default: the tier's grant)",
    )
    token.add_argument(
        "--ttl", type=int, default=None, help="seconds (default 3600; 900 for a roomless token)"
    )
    token.set_defaults(func=cmd_token)

    rooms = sub.add_parser("rooms", help="list, create or delete rooms")
    rooms.add_argument("action", choices=("list", "create", "delete"), help="what to do")
    rooms.add_argument("room", nargs="?", help="the room id (create, delete)")
    rooms.add_argument("--url", default=None, help=URL_HELP)
    rooms.add_argument("--max-participants", type=int, default=0, help="create: 0 for no limit")
    rooms.add_argument(
        "--livestream", action="store_true", help="create: hide participants with nothing to show"
    )
    rooms.add_argument("--json", action="store_true", help="print JSON, not a table")
    rooms.set_defaults(func=cmd_rooms)

    parts = sub.add_parser("participants", help="list a room's participants")
    parts.add_argument("room", help="the room id")
    parts.add_argument("--tier", choices=("speaker", "viewer"), default=None, help="default: both")
    parts.add_argument("--limit", type=int, default=50, help="participants per page")
    parts.add_argument("--all", action="store_true", help="walk every page")
    parts.add_argument("--url", default=None, help=URL_HELP)
    parts.add_argument("--json", action="store_true", help="print JSON, not a table")
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
    cluster.add_argument("action", choices=("status",), help="what to show")
    add_nats_options(cluster)
    cluster.set_defaults(func=cmd_cluster)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark suite",
        add_help=False,  # `bench SUITE --help` is the suite's own help
        usage="stagecast bench [-h] SUITE [options]",
        epilog="`stagecast bench SUITE --help` lists a suite's options.",
    )
    bench.add_argument("-h", "--help", action="store_true", dest="bench_help", help="this help")
    bench.add_argument("suite", nargs="?", choices=BENCH_SUITES, help="the suite to run")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the suite's own options")
    bench.set_defaults(func=cmd_bench, bench_parser=bench)
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
