"""What the statekeeper benchmarks start: a private nats-server and statekeeper processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import Popen

import nats
from nats.aio.client import Client as NATS

from processes.children import CLI, spawn_child, stop_child
from processes.natsserver import NatsServer
from schemas import subjects
from schemas.api import HealthReply, HealthRequest
from schemas.codec import decode, encode


@contextlib.asynccontextmanager
async def private_nats() -> AsyncIterator[tuple[NatsServer, NATS, Path]]:
    """A nats-server in a temp dir, a client on it, and the temp dir."""
    with tempfile.TemporaryDirectory(prefix="stagecast-bench-") as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats")
        await server.start()
        nc = await nats.connect(server.url, max_reconnect_attempts=-1)
        try:
            yield server, nc, workdir
        finally:
            await nc.drain()
            await server.stop()


def start_statekeeper(nats_url: str, database_url: str, log: Path, *extra: str) -> Popen[bytes]:
    """A `stagecast statekeeper` process (with `extra` options), its output in `log`."""
    env = dict(os.environ, STAGECAST_API_KEY="bench", STAGECAST_API_SECRET="bench-secret")
    return spawn_child(
        [
            *CLI,
            "statekeeper",
            "--nats-url",
            nats_url,
            "--database-url",
            database_url,
            *extra,
        ],
        env=env,
        log_path=log,
    )


async def health(nc: NATS, timeout: float = 1.0) -> HealthReply | None:
    """The statekeeper's health, or None if it does not answer."""
    try:
        msg = await nc.request(subjects.STATEKEEPER_API, encode(HealthRequest()), timeout)
    except Exception:
        return None
    reply = decode(msg.data)
    return reply if isinstance(reply, HealthReply) else None


async def wait_applied(nc: NATS, seq: int, *, limit_s: float = 300.0) -> HealthReply:
    """Poll until the statekeeper is serving and has folded up to `seq`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        reply = await health(nc)
        if reply is not None and reply.ok and reply.applied_seq >= seq:
            return reply
        if loop.time() > deadline:
            raise TimeoutError(f"statekeeper did not reach seq {seq}: {reply}")
        await asyncio.sleep(0.01)


__all__ = ["private_nats", "start_statekeeper", "stop_child", "wait_applied"]
