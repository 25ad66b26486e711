"""compose.yaml describes the documented cluster, with commands the `stagecast` CLI accepts.

No Docker engine is needed: the file is parsed with PyYAML and every Stagecast service's
command line is parsed with the real `stagecast.cli.build_parser`. (`docker-compose -f
compose.yaml config -q` is the engine-side check; see docs/deployment.md.)
"""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is not installed in this environment (it is not a dependency)"
)

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = {
    "nats1",
    "nats2",
    "nats3",
    "postgres",
    "statekeeper1",
    "statekeeper2",
    "edge1",
    "edge2",
    "forwarder1",
    "forwarder2",
}
NATS_NODES = ("nats1", "nats2", "nats3")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    found: dict[str, dict[str, Any]] = document["services"]
    return found


def _argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _dockerfile_entrypoint() -> list[str]:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            entrypoint: list[str] = json.loads(line.removeprefix("ENTRYPOINT").strip())
            return entrypoint
    return []


def _stagecast_args(service: dict[str, Any]) -> list[str]:
    """The arguments after `stagecast` that the service's container runs."""
    entrypoint = _argv(service.get("entrypoint")) or _dockerfile_entrypoint()
    argv = entrypoint + _argv(service.get("command"))
    assert argv and argv[0] == "stagecast", f"not a stagecast command line: {argv}"
    return argv[1:]


def _parse(name: str, service: dict[str, Any]) -> Any:
    """The CLI's namespace for the service's command line (a test failure if it is refused)."""
    from stagecast.cli import build_parser

    argv = _stagecast_args(service)
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{name}: `stagecast {shlex.join(argv)}` is not a valid stagecast command")


def _stagecast_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if "build" in s}


def test_the_cluster_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert services.keys() >= CLUSTER, f"missing: {sorted(CLUSTER - services.keys())}"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert set(_stagecast_services(services)) >= {"statekeeper1", "statekeeper2", "edge1", "edge2"}


def test_nats_nodes_form_one_jetstream_cluster(services: dict[str, dict[str, Any]]) -> None:
    for name in NATS_NODES:
        node = services[name]
        argv = _argv(node["command"])
        assert node["image"].startswith("nats:2.10")
        assert "-js" in argv
        assert argv[argv.index("--cluster_name") + 1] == "stagecast"
        assert argv[argv.index("-n") + 1] == name  # JetStream clustering needs a server name
        routes = argv[argv.index("--routes") + 1].split(",")
        assert {f"nats://{n}:6222" for n in NATS_NODES} <= set(routes)


def _nats_url(service: dict[str, Any]) -> str:
    """The service's NATS URL: from the environment (it holds a password), never argv."""
    url: str = service["environment"]["STAGECAST_NATS_URL"]
    return url


def test_every_stagecast_service_runs_a_real_subcommand(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in _stagecast_services(services).items():
        args = _parse(name, service)
        assert args.command in ("edge", "statekeeper", "forwarder", "webhooks"), name
        assert args.nats_url is None, f"{name}: a password on the command line shows in ps"
        assert _nats_url(service).startswith("nats://"), name


def test_each_service_logs_in_to_nats_with_its_role_and_no_default_password(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in _stagecast_services(services).items():
        role = _stagecast_args(service)[0].removesuffix("s")  # `webhooks` logs in as webhook
        var = f"STAGECAST_NATS_{role.upper()}_PASSWORD"
        # `:?` makes compose refuse to start when the password is not set
        assert _nats_url(service).startswith(f"nats://{role}:${{{var}:?"), name
    for name in NATS_NODES:
        node = services[name]
        argv = _argv(node["command"])
        config = argv[argv.index("-c") + 1]
        assert f"./deploy/nats-auth.conf:{config}:ro" in node["volumes"]
        for role in ("EDGE", "STATEKEEPER", "FORWARDER", "WEBHOOK", "AGENT", "ADMIN"):
            var = f"STAGECAST_NATS_{role}_PASSWORD"
            assert node["environment"][var].startswith(f"${{{var}:?"), (name, var)


def test_the_nats_authorization_file_is_what_the_roles_generate() -> None:
    from roomlog.roles import Role, RoleUser, authorization_config

    text = (ROOT / "deploy" / "nats-auth.conf").read_text()
    block = text[text.index("authorization {") :]
    assert block == authorization_config(RoleUser.from_env_var(role) for role in Role), (
        "regenerate it: stagecast nats-auth > deploy/nats-auth.conf (keep the header)"
    )


def test_forwarders_use_the_host_network_and_reach_nats_there(
    services: dict[str, dict[str, Any]],
) -> None:
    ids = set()
    for name in ("forwarder1", "forwarder2"):
        service = services[name]
        args = _parse(name, service)
        assert args.command == "forwarder"
        # WebRTC media arrives on per-connection UDP ports that clients must reach directly
        assert service["network_mode"] == "host"
        # every node's port published on the host's loopback, each with the forwarder login
        hosts = [url.rsplit("@", 1)[1] for url in _nats_url(service).split(",")]
        assert hosts == [f"127.0.0.1:{p}" for p in (4222, 4223, 4224)]
        ids.add(args.id)
    assert len(ids) == 2  # distinct forwarder ids
    for node, port in zip(NATS_NODES, (4222, 4223, 4224), strict=True):
        assert f"127.0.0.1:{port}:4222" in services[node]["ports"]


def test_edges_listen_on_their_published_ports(services: dict[str, dict[str, Any]]) -> None:
    for name, port in (("edge1", 7880), ("edge2", 7881)):
        args = _parse(name, services[name])
        assert args.command == "edge"
        assert args.host == "0.0.0.0", f"{name} must listen beyond the container's loopback"
        assert args.port == port
        assert any(str(p).endswith(f":{port}") for p in services[name]["ports"])
        assert f":{port}/healthz" in " ".join(_argv(services[name]["healthcheck"]["test"]))


def test_two_statekeepers_share_the_partitions_of_one_database(
    services: dict[str, dict[str, Any]],
) -> None:
    keepers = {
        name: s
        for name, s in _stagecast_services(services).items()
        if _stagecast_args(s)[0] == "statekeeper"
    }
    # Both run (leases split the partitions), with the same partition count.
    assert sorted(n for n, s in keepers.items() if not s.get("profiles")) == [
        "statekeeper1",
        "statekeeper2",
    ]
    partitions = {
        _stagecast_args(s)[_stagecast_args(s).index("--partitions") + 1] for s in keepers.values()
    }
    assert partitions == {"8"}
    urls = {s["environment"]["STAGECAST_DATABASE_URL"] for s in keepers.values()}
    assert len(urls) == 1, "statekeepers share one database (leases need PostgreSQL)"
    assert urls.pop().startswith("postgresql+asyncpg://")


def test_the_image_copies_every_package_the_distribution_installs() -> None:
    """A package missing from the Dockerfile's COPY lines installs nothing: the image would
    fail at its first import of it."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.removesuffix("*") for pattern in include}
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    missing = sorted(p for p in packages if f"COPY {p} ./{p}" not in dockerfile)
    assert not missing, f"the Dockerfile does not copy {missing}"


def test_docker_compose_accepts_the_file_only_with_every_nats_password() -> None:
    import os
    import shutil
    import subprocess

    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    roles = ("EDGE", "STATEKEEPER", "FORWARDER", "WEBHOOK", "AGENT", "ADMIN")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_NATS_")}
    env |= {f"STAGECAST_NATS_{role}_PASSWORD": f"pw{n}" for n, role in enumerate(roles)}
    env["POSTGRES_PASSWORD"] = "pg"

    def check(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "-f", str(ROOT / "compose.yaml"), "config", "-q"],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )

    complete = check(env)
    assert complete.returncode == 0, complete.stderr
    env.pop("STAGECAST_NATS_FORWARDER_PASSWORD")
    missing = check(env)
    assert missing.returncode != 0 and "STAGECAST_NATS_FORWARDER_PASSWORD" in missing.stderr


def test_services_know_every_nats_node_and_ask_for_three_replicas(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in _stagecast_services(services).items():
        args = _parse(name, service)
        urls = _nats_url(service).split(",")
        assert len(urls) == 3, f"{name} must be given every NATS node"
        role = {"webhooks": "webhook"}.get(args.command, args.command)
        assert all(url.startswith(f"nats://{role}:") for url in urls), name
        assert service["environment"]["STAGECAST_REPLICAS"] == "3", name
