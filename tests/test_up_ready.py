"""`stagecast up`'s ready line means ready: a publish and a subscribe right after it succeed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
from aiortc.mediastreams import AudioStreamTrack

import stagecast
from roomlog.connect import NatsAuth
from stagecast.agents import Worker
from stagecast.client import ConnectOptions
from stagecast.client.events import Subscription
from tests.agent_jobs import stay
from tests.polling import eventually

pytestmark = pytest.mark.timeout(60)

OPTIONS = ConnectOptions(connect_timeout=15.0, request_timeout=15.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_publish_right_after_the_ready_line_succeeds(tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, STAGECAST_API_KEY="devkey", STAGECAST_API_SECRET="devsecret")
    env.pop("STAGECAST_NATS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stagecast.cli", "up",
        "--port", str(port), "--data-dir", str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        while not any("Stagecast ready at" in line for line in lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 50)).decode()
            assert line, f"`stagecast up` ended before its ready line: {lines}"
            lines.append(line)
        # no pause: the very first actions after the ready line
        url = f"http://127.0.0.1:{port}"

        def token(identity: str) -> str:
            return stagecast.generate_token("devkey", "devsecret", "ready", identity)

        alice = await stagecast.join(url, token("alice"), options=OPTIONS)
        bob = await stagecast.join(url, token("bob"), options=OPTIONS)
        heard: asyncio.Future[Subscription] = asyncio.get_running_loop().create_future()

        def on_subscribed(subscription: Subscription) -> None:
            if not heard.done():
                heard.set_result(subscription)

        def on_participant(participant: stagecast.client.RemoteParticipant) -> None:
            participant.on("stream-subscribed", on_subscribed)

        bob.on("participant-joined", on_participant)
        await alice.local_participant.publish(AudioStreamTrack())  # UNAVAILABLE if not ready
        subscription = await asyncio.wait_for(heard, 20)
        frame = await asyncio.wait_for(subscription.track.recv(), 20)
        assert frame.sample_rate > 0
        await alice.leave()
        await bob.leave()

        # an agent worker started beside it logs in with the printed agent key and takes a job
        while not any(line.startswith("  try ") for line in lines):  # the rest of the banner
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line, f"`stagecast up` ended in its banner: {lines}"
            lines.append(line)
        agent_key = Path(next(line.split()[3] for line in lines if "nats agent key" in line))
        nats_url = next(m[1] for line in lines if (m := re.match(r"\s+nats\s+(\w+://\S+)", line)))
        async with (
            Worker(url, "devkey", "devsecret", entrypoint=stay, nats_url=nats_url,
                   nats_auth=NatsAuth(creds=agent_key), options=OPTIONS),
            stagecast.RoomService(url, "devkey", "devsecret") as api,
        ):  # fmt: skip
            await api.create_room("agents")
            job = await api.dispatch_agent("agents", "assistant")

            async def running() -> bool:
                jobs = await api.list_dispatches("agents")
                return [(j.id, j.state) for j in jobs] == [(job.id, "running")]

            await eventually(running, timeout=20, what="the job running on the agent worker")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 20)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
