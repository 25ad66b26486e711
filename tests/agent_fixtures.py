"""Agent workers for the dispatch tests: `stagecast agent-worker` processes (that a test can
kill -9) and in-process `Worker`s, and the room's agent events as the events stream holds
them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats

from schemas.agents import AgentJobEndedEvent, AgentJobStartedEvent
from schemas.codec import decode
from schemas.subjects import room_events
from stagecast.agents import Worker
from tests.agent_jobs import stay
from tests.stack_fixtures import API_KEY, API_SECRET, OPTIONS

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def worker_process(
    url: str, nats_url: str, worker_id: str, log_path: Path, entrypoint: str = "stay"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A `stagecast agent-worker` running `tests.agent_jobs:<entrypoint>`, ready (it said so)
    when this yields, and killed at the end if it still runs."""
    env = dict(os.environ, STAGECAST_API_KEY=API_KEY, STAGECAST_API_SECRET=API_SECRET)
    env["PYTHONPATH"] = str(ROOT)
    argv = [
        sys.executable, "-m", "stagecast.cli", "agent-worker",
        "--module", f"tests.agent_jobs:{entrypoint}",
        "--url", url,
        "--nats-url", nats_url,
        "--worker-id", worker_id,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=log_file
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert b"ready" in line, (line, f"see {log_path}")
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)


def in_process_worker(
    url: str, nats_url: str, worker_id: str, entrypoint: object = stay, name: str = "assistant"
) -> Worker:
    """A `Worker` in this process that beats every 0.2 s."""
    return Worker(
        url,
        API_KEY,
        API_SECRET,
        agent_name=name,
        entrypoint=entrypoint,  # type: ignore[arg-type]
        nats_url=nats_url,
        worker_id=worker_id,
        beat_interval=0.2,
        options=OPTIONS,
    )


async def agent_events(nats_url: str, room: str, count: int, wait: float = 20.0) -> list[object]:
    """The first `count` agent job events of `room` on the events stream."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(room_events(room), ordered_consumer=True)
        events: list[object] = []
        while len(events) < count:
            msg = await sub.next_msg(timeout=wait)
            event = decode(msg.data)
            if isinstance(event, (AgentJobStartedEvent, AgentJobEndedEvent)):
                events.append(event)
        return events
    finally:
        await nc.close()
