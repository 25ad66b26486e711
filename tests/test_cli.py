"""The command line as a newcomer uses it: `stagecast up`, `token`, `rooms`, and a clean stop."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from access.tokens import verify_token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stagecast.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_up_serves_then_stops_cleanly_without_orphans(tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, STAGECAST_API_KEY="devkey", STAGECAST_API_SECRET="devsecret")
    env.pop("STAGECAST_NATS_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stagecast.cli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Stagecast ready at" in line:
                break
        assert any(f"Stagecast ready at http://127.0.0.1:{port}" in x for x in lines), lines
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # nats-server, statekeeper, edge
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        token = _cli("token", "--room", "demo", "--identity", "alice", env=env)
        assert token.returncode == 0, token.stderr
        claims = verify_token(token.stdout.strip(), {"devkey": "devsecret"})
        assert claims.room_id == "demo" and claims.participant_id == "alice"
        audience = _cli("token", "--viewer", env=env)
        assert verify_token(audience.stdout.strip(), {"devkey": "devsecret"}).is_viewer

        env_url = dict(env, STAGECAST_URL=f"http://127.0.0.1:{port}")
        created = _cli("rooms", "create", "town-hall", env=env_url)
        assert created.returncode == 0 and "created town-hall" in created.stdout, created
        assert created.stderr == "", "no dev-pair or PyJWT warning on a client command"
        again = _cli("rooms", "create", "town-hall", env=env_url)
        assert again.returncode == 0 and "exists already" in again.stdout, again
        livestream = _cli("rooms", "create", "town-hall", "--livestream", env=env_url)
        assert livestream.returncode == 1 and "--livestream" in livestream.stderr, livestream
        listed = _cli("rooms", "list", env=env_url)
        assert "town-hall" in listed.stdout
        as_json = json.loads(_cli("rooms", "list", "--json", env=env_url).stdout)
        assert [r["id"] for r in as_json] == ["town-hall"] and as_json[0]["sid"].startswith("RM_")
        people = _cli("participants", "town-hall", env=env_url)
        assert people.returncode == 0 and "0 in total" in people.stdout, people
        people = _cli("participants", "town-hall", "--json", env=env_url)
        assert json.loads(people.stdout) == {"participants": [], "total": 0, "next_cursor": None}
        missing = _cli("rooms", "delete", env=env_url)
        assert missing.returncode == 2 and "room id is required" in missing.stderr, missing
        assert missing.stdout == ""

        # The private NATS takes only the per-role NKeys up wrote for its children.
        credentials = tmp_path / "data" / "nats" / "credentials"
        modes = {p.name: p.stat().st_mode & 0o777 for p in credentials.iterdir()}
        assert modes == dict.fromkeys(
            ("statekeeper.nk", "edge.nk", "forwarder.nk", "admin.nk", "agent.nk"), 0o600
        )
        nats_url = next(x.split()[1] for x in lines if x.startswith("nats-server"))
        anonymous = _cli("forwarder", "--nats-url", nats_url, env=env)
        assert anonymous.returncode == 3, anonymous
        assert "NatsAuthRefused" in anonymous.stderr and "Traceback" not in anonymous.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
    assert status == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child


def test_edge_with_inconsistent_connection_limits_exits_with_a_message() -> None:
    env = dict(os.environ, STAGECAST_API_KEY="devkey", STAGECAST_API_SECRET="devsecret")
    args = ("edge", "--nats-url", "nats://127.0.0.1:1", "--max-connections", "3")
    done = _cli(*args, "--max-connections-per-address", "4", env=env)
    assert done.returncode != 0
    assert "max_connections_per_address must not exceed max_connections" in done.stderr
    assert "Traceback" not in done.stderr


def test_replicas_come_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from stagecast.cli import build_parser
    from stagecast.cli_nats import replicas_option

    parser = build_parser()
    base = ["statekeeper", "--nats-url", "nats://a:4222,nats://b:4222"]
    monkeypatch.delenv("STAGECAST_REPLICAS", raising=False)
    assert replicas_option(parser.parse_args(base)) == 1
    monkeypatch.setenv("STAGECAST_REPLICAS", "3")
    assert replicas_option(parser.parse_args(base)) == 3
    assert replicas_option(parser.parse_args([*base, "--replicas", "5"])) == 5
    monkeypatch.setenv("STAGECAST_REPLICAS", "three")
    with pytest.raises(SystemExit, match="STAGECAST_REPLICAS"):
        replicas_option(parser.parse_args(base))
    with pytest.raises(SystemExit, match="must be 1 to 5"):
        replicas_option(parser.parse_args([*base, "--replicas", "7"]))


def test_an_edge_has_no_replicas_flag_since_it_never_makes_the_streams(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stagecast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["edge", "--replicas", "3"])
    assert "--replicas" in capsys.readouterr().err


def test_up_refuses_replicas_its_private_server_cannot_hold(tmp_path: Path) -> None:
    env = dict(os.environ, STAGECAST_API_KEY="devkey", STAGECAST_API_SECRET="devsecret")
    done = _cli("up", "--data-dir", str(tmp_path), "--replicas", "3", env=env)
    assert done.returncode != 0
    assert "--replicas 3 needs --nats-url of a NATS cluster" in done.stderr
    assert "Traceback" not in done.stderr


def test_statekeeper_asking_more_replicas_than_nats_holds_exits_with_a_message(
    nats_url: str, tmp_path: Path
) -> None:
    env = dict(os.environ, STAGECAST_API_KEY="devkey", STAGECAST_API_SECRET="devsecret")
    database = f"sqlite+aiosqlite:///{tmp_path / 'sk.db'}"
    args = ("statekeeper", "--nats-url", nats_url, "--database-url", database)
    done = _cli(*args, "--replicas", "3", env=env)
    assert done.returncode != 0
    assert "stream STAGECAST_LOG with 3 replica(s) refused" in done.stderr
    assert "Traceback" not in done.stderr


def _bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
    return {**env, **extra}


def test_bench_help_exits_0_and_a_missing_suite_is_an_error_on_stderr() -> None:
    helped = _cli("bench", "--help", env=_bare_env())
    assert helped.returncode == 0 and "fold" in helped.stdout and "storm" in helped.stdout
    bare = _cli("bench", env=_bare_env())
    assert bare.returncode == 2 and bare.stdout == "" and "a suite is required" in bare.stderr


def test_every_flag_has_help() -> None:
    from stagecast.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help
    ]
    assert missing == []


@pytest.mark.parametrize("suite", ["fold", "storm", "faults"])
def test_every_bench_flag_says_its_default(suite: str) -> None:
    helped = _cli("bench", suite, "--help", env=_bare_env())
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "--viewers VIEWERS (default: " in text, text


def test_token_with_the_dev_pair_prints_only_the_token() -> None:
    minted = _cli("token", "--room", "demo", env=_bare_env())
    assert minted.returncode == 0 and minted.stderr == "", minted.stderr
    assert verify_token(minted.stdout.strip(), {"devkey": "devsecret"}).room_id == "demo"
    refused = _cli("token", "--ttl", "99999", env=_bare_env())  # roomless: 900 s at most
    assert refused.returncode == 1 and "900" in refused.stderr and refused.stdout == ""
    assert "Traceback" not in refused.stderr


def test_the_secret_without_the_key_is_a_clear_error() -> None:
    half = _cli("token", "--room", "demo", env=_bare_env(STAGECAST_API_SECRET="s" * 40))
    assert half.returncode == 1 and half.stdout == ""
    assert "STAGECAST_API_KEY is not" in half.stderr, half.stderr


def test_an_unreachable_edge_is_an_error_on_stderr() -> None:
    down = _cli("rooms", "list", "--url", f"http://127.0.0.1:{_free_port()}", env=_bare_env())
    assert down.returncode == 1 and down.stdout == "" and "UNAVAILABLE" in down.stderr


def test_pyproject_license_is_an_spdx_string() -> None:
    """A TOML-table `project.license` makes setuptools warn on every install."""
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_the_ready_banner_names_a_stagecast_that_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After `make up` the command is `.venv/bin/stagecast`, not on PATH: say that path."""
    from stagecast.up import command_name

    script = Path(sys.executable).parent / "stagecast"
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing named stagecast there
    named = command_name()
    assert named != "stagecast" and Path(named).resolve() == script.resolve()
    monkeypatch.setenv("PATH", str(script.parent))
    assert command_name() == "stagecast"
