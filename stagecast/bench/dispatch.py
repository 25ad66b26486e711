"""Agent dispatch: what a job costs through the room log, and what a statekeeper restart does.

`stagecast bench dispatch --jobs 20 --rounds 5` starts a private nats-server, a statekeeper
and one edge as processes, and two agent workers in this process (capacity 16 each, an
entrypoint that stays in the room). In each of `--rounds` rounds, in a fresh room:

- `--jobs` `update_room_metadata` calls one after another: the baseline, one room-log write
  folded and answered;
- `--jobs` `dispatch_agent` calls one after another (also one room-log write each), each
  timed to its answer and to its entrypoint starting on a worker (the dispatcher's next
  tick, the offer through the agent name's queue group, the acceptance appended to the
  log, the agent's join). Each round starts `OFFER_GRACE_MS` after the statekeeper's
  (re)start: a new statekeeper makes no offer before (it waits for the workers' beats);
- the statekeeper is SIGKILLed and started again; timed until `list_rooms` lists the room,
  and until `list_dispatches` lists every job running on its worker again;
- the room is deleted (its agents leave).

Figures: `metadata_rtt_ms`, `dispatch_rtt_ms` (medians of every call),
`dispatch_vs_metadata_ratio`, `dispatch_to_running_ms` (median), `spread_jobs` (the largest
difference between the two workers' job counts after a round's dispatches),
`restart_room_listed_s`, `restart_jobs_listed_s` (medians over rounds, from the respawn),
and `jobs_restarted_after_restart` (entrypoints started again after the restarts, summed:
0 means no job of a live worker was offered again).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console

import stagecast
from roomlog.roles import Role
from stagecast.agents import JobContext, Worker
from stagecast.bench import Result
from stagecast.bench.storm import free_port_block
from stagecast.client import ConnectOptions
from stagecast.up import Stack, UpConfig
from statekeeper.dispatch import OFFER_GRACE_MS

API_KEY = "dispatch"
WAIT = 60.0
console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=20, help="jobs per round (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")


class Starts:
    """When each job's entrypoint started, and how many times (an entrypoint that stays)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.count: dict[str, int] = {}

    async def entrypoint(self, ctx: JobContext) -> None:
        self.at.setdefault(ctx.job_id, time.monotonic())
        self.count[ctx.job_id] = self.count.get(ctx.job_id, 0) + 1
        await ctx.wait_for_disconnect()


async def run(args: argparse.Namespace) -> list[Result]:
    if not 1 <= args.jobs <= 32 or not 1 <= args.rounds <= 50:
        raise SystemExit("need 1 <= --jobs <= 32 (two workers of 16) and 1 <= --rounds <= 50")
    quiet = logging.getLogger("stagecast")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # each job's joins and leaves, not the figures
    try:
        return await _run(args)
    finally:
        quiet.setLevel(level)  # run in-process (tests): leave the logger as it was


async def _run(args: argparse.Namespace) -> list[Result]:
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="stagecast-dispatch-") as tmp:
        config = UpConfig(
            port=free_port_block(1), data_dir=Path(tmp), edges=1, forwarders=0,
            api_key=API_KEY, api_secret=secret, dev=False,
        )  # fmt: skip
        stack = Stack(config)
        try:
            console.print("starting nats-server, a statekeeper and an edge")
            await asyncio.wait_for(stack.start(log=lambda line: None), 120.0)
            return await _measure(args, stack, secret)
        finally:
            await stack.stop()


@dataclasses.dataclass
class Figures:
    metadata_rtt: list[float] = dataclasses.field(default_factory=list)
    dispatch_rtt: list[float] = dataclasses.field(default_factory=list)
    to_running: list[float] = dataclasses.field(default_factory=list)
    room_listed: list[float] = dataclasses.field(default_factory=list)
    jobs_listed: list[float] = dataclasses.field(default_factory=list)
    spread: int = 0
    restarted: int = 0


async def _measure(args: argparse.Namespace, stack: Stack, secret: str) -> list[Result]:
    url = stack.edge_urls[0]
    starts = Starts()
    options = ConnectOptions(request_timeout=30.0)
    auth = stack.auth_for(Role.ADMIN)  # `stagecast up` makes no agent login
    workers = [
        Worker(
            url,
            API_KEY,
            secret,
            agent_name="assistant",
            entrypoint=starts.entrypoint,
            nats_url=stack.nats_url,
            nats_auth=auth,
            worker_id=f"AW_{n}",
            options=options,
        )
        for n in range(2)
    ]
    figures = Figures()
    async with stagecast.RoomService(url, API_KEY, secret, timeout=30.0) as api:
        for worker in workers:
            await worker.start()
        try:
            for n in range(args.rounds):
                loads = await _round(
                    api, stack, workers, starts, f"dispatch-{n}", args.jobs, figures
                )
                console.print(
                    f"round {n + 1}: dispatch {statistics.median(figures.dispatch_rtt):.1f} ms, "
                    f"to running {statistics.median(figures.to_running):.1f} ms, loads {loads}, "
                    f"jobs listed {figures.jobs_listed[-1]:.2f} s after the restart"
                )
        finally:
            for worker in workers:
                await worker.aclose()
    note = f"{args.jobs} jobs x {args.rounds} rounds, medians"
    metadata = statistics.median(figures.metadata_rtt)
    dispatch = statistics.median(figures.dispatch_rtt)
    return [
        Result("metadata_rtt_ms", metadata, "ms", f"update_room_metadata, {note}"),
        Result("dispatch_rtt_ms", dispatch, "ms", f"dispatch_agent, {note}"),
        Result("dispatch_vs_metadata_ratio", dispatch / metadata, "x", "both one log write"),
        Result("dispatch_to_running_ms", statistics.median(figures.to_running), "ms", note),
        Result("spread_jobs", figures.spread, "jobs", "largest |A - B| after a round"),
        Result(
            "restart_room_listed_s", statistics.median(figures.room_listed), "s", "from respawn"
        ),
        Result("restart_jobs_listed_s", statistics.median(figures.jobs_listed), "s", "all running"),
        Result("jobs_restarted_after_restart", figures.restarted, "jobs", "0: none offered again"),
    ]


async def _round(
    api: stagecast.RoomService,
    stack: Stack,
    workers: list[Worker],
    starts: Starts,
    room: str,
    jobs: int,
    figures: Figures,
) -> list[int]:
    """One round (see the module docstring); the two workers' job counts after dispatch."""
    await asyncio.sleep(OFFER_GRACE_MS / 1000)  # a statekeeper (re)started offers after it
    await api.create_room(room)
    for i in range(jobs):
        started = time.monotonic()
        await api.update_room_metadata(room, f"m{i}")
        figures.metadata_rtt.append((time.monotonic() - started) * 1000)
    asked: dict[str, float] = {}
    for i in range(jobs):
        started = time.monotonic()
        job = await api.dispatch_agent(room, "assistant", metadata=f"{i}")
        figures.dispatch_rtt.append((time.monotonic() - started) * 1000)
        asked[job.id] = started
    await _until(lambda: all(j in starts.at for j in asked), "every job started")
    figures.to_running += [(starts.at[j] - t) * 1000 for j, t in asked.items()]
    loads = [sum(j in asked for j in w.jobs) for w in workers]
    figures.spread = max(figures.spread, max(loads) - min(loads))
    before = sum(starts.count[j] for j in asked)
    stack.kill(0)
    stack.respawn(0)
    killed = time.monotonic()
    await _until_true(lambda: _room_listed(api, room), "the room listed")
    figures.room_listed.append(time.monotonic() - killed)
    await _until_true(lambda: _all_running(api, room, set(asked)), "every job listed")
    figures.jobs_listed.append(time.monotonic() - killed)
    figures.restarted += sum(starts.count[j] for j in asked) - before
    await api.delete_room(room)
    await _until(lambda: not any(j in w.jobs for w in workers for j in asked), "the jobs ended")
    return loads


async def _room_listed(api: stagecast.RoomService, room: str) -> bool:
    return [r.id for r in await api.list_rooms([room])] == [room]


async def _all_running(api: stagecast.RoomService, room: str, ids: set[str]) -> bool:
    jobs = await api.list_dispatches(room)
    return {j.id for j in jobs if j.state == "running" and j.attempt == 1} == ids


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"stagecast bench dispatch: timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _until_true(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Ask until `check` says yes (a refusal meanwhile, the statekeeper starting, is a no)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if await check():
                return
        except stagecast.errors.StagecastError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"stagecast bench dispatch: timed out waiting for {what}")
        await asyncio.sleep(0.01)
