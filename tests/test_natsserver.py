"""The private nats-server: free ports, crash and restart with data kept, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import nats
import psutil
import pytest
from nats.aio.client import Client as NATS

from processes.natsserver import NatsServer, NatsServerError
from tests.conftest import NATS_CLIENT_OPTIONS
from tests.polling import eventually

REPO_ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def connect(server: NatsServer) -> NATS:
    return await nats.connect(server.url, **NATS_CLIENT_OPTIONS)


async def test_starts_on_free_ports_listening_on_loopback(nats_server: NatsServer) -> None:
    assert nats_server.running
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.port > 0 and nats_server.http_port > 0
    proc = psutil.Process(nats_server.pid)
    listening = {c.laddr for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert nats_server.port in {addr.port for addr in listening}
    nc = await connect(nats_server)
    try:
        info = await nc.jetstream().account_info()
        assert info.streams == 0
    finally:
        await nc.close()
    assert (nats_server.store_dir / "nats-server.log").exists()


async def test_two_servers_get_different_ports(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "a") as a, NatsServer(tmp_path / "b") as b:
        assert a.port != b.port


async def test_explicit_port_is_used(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with NatsServer(tmp_path / "n", port=port) as server:
        assert server.url == f"nats://127.0.0.1:{port}"


async def test_kill_then_restart_keeps_jetstream_data_and_port(nats_server: NatsServer) -> None:
    nc = await connect(nats_server)
    try:
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.a", b"first")
        ack = await js.publish("keep.b", b"second")
    finally:
        await nc.close()
    port, old_pid = nats_server.port, nats_server.pid
    assert old_pid is not None

    nats_server.kill()  # SIGKILL: no clean shutdown
    assert not nats_server.running and not alive(old_pid)
    await nats_server.restart()

    assert nats_server.port == port and nats_server.pid != old_pid
    nc = await connect(nats_server)
    try:
        stored = await nc.jetstream().get_msg("KEEP", ack.seq)
        assert (stored.seq, stored.subject, stored.data) == (ack.seq, "keep.b", b"second")
    finally:
        await nc.close()


async def test_a_connected_client_comes_back_after_a_crash(nats_server: NatsServer) -> None:
    nc = await connect(nats_server)
    try:
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        nats_server.kill()
        await nats_server.start()
        ack = await eventually(lambda: js.publish("keep.x", b"x"), what="publish after restart")
        assert ack.seq == 1
    finally:
        await nc.close()


async def test_stop_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "n")
    await server.stop()  # never started: nothing to do
    await server.start()
    pid = server.pid
    assert pid is not None and alive(pid)
    await server.stop()
    await server.stop()
    server.kill()
    assert not server.running and server.pid is None
    assert not alive(pid)
    assert not list(server.store_dir.glob("*.ports"))


async def test_context_manager_stops_on_error(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "n")
    with pytest.raises(RuntimeError, match="boom"):
        async with server:
            pid = server.pid
            raise RuntimeError("boom")
    assert pid is not None and not alive(pid)


async def test_start_failure_names_the_cause(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path / "n", port=taken.getsockname()[1], start_timeout=10)
        with pytest.raises(NatsServerError, match="nats-server") as caught:
            await server.start()
    assert "address already in use" in caught.value.log_tail
    assert not server.running


async def test_missing_binary_is_a_named_error(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "n", binary=tmp_path / "no-such-nats-server")
    with pytest.raises(NatsServerError, match="no-such-nats-server"):
        await server.start()


async def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL (no cleanup at all) takes its nats-server with it."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from pathlib import Path
        from processes.natsserver import NatsServer

        async def main():
            server = NatsServer(Path({str(tmp_path / "n")!r}))
            await server.start()
            print(server.pid, flush=True)
            time.sleep(60)

        asyncio.run(main())
        """
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), 30)
        child = int(line)
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        await eventually(lambda: not alive(child), what="nats-server to die with its parent")
    finally:
        if parent.returncode is None:
            parent.kill()
        await parent.wait()
