"""Agent jobs outlive the statekeeper that dispatched them: after a kill -9 and a restart
(SQLite), or a lease takeover by another statekeeper (PostgreSQL), every job is still
listed, the job of a live worker is not offered again, and the job of a worker killed
meanwhile is offered to another worker, once. Real nats-server, `stagecast statekeeper`
and `stagecast agent-worker` processes, an edge and a worker in this process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

import stagecast
from edge.config import EdgeConfig
from edge.main import running_edge
from processes.natsserver import NatsServer
from schemas.agents import AgentDispatch, AgentJobEndedEvent, AgentJobStartedEvent
from stagecast.agents import JobContext
from tests.agent_fixtures import agent_events, in_process_worker, worker_process
from tests.polling import eventually
from tests.stack_fixtures import API_KEY, API_SECRET
from tests.test_statekeeper_takeover import (
    keepers,
    postgres_url,  # noqa: F401 (a fixture)
    room_in,
    split_between,
)

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0


@contextlib.asynccontextmanager
async def solo_statekeeper(nats_url: str, database_url: str, log: Path) -> AsyncIterator[int]:
    """A `stagecast statekeeper` process (no leases), ready; yields its pid."""
    env = dict(os.environ, STAGECAST_API_KEY=API_KEY, STAGECAST_API_SECRET=API_SECRET)
    argv = ("statekeeper", "--nats-url", nats_url, "--database-url", database_url)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "stagecast.cli", *argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=out,
            env=env,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"statekeeper ready"), (line, f"see {log}")
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class Runs:
    """How many times each job's entrypoint started on the in-process worker."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    async def stay(self, ctx: JobContext) -> None:
        self.count[ctx.job_id] = self.count.get(ctx.job_id, 0) + 1
        await ctx.wait_for_disconnect()


async def two_jobs_on_two_workers(
    api: stagecast.RoomService, room: str
) -> tuple[AgentDispatch, AgentDispatch]:
    """Dispatch two jobs and wait until they run, one on each worker: (on AW_stays, on
    AW_doomed)."""
    first = await api.dispatch_agent(room, "assistant", metadata="first")
    second = await api.dispatch_agent(room, "assistant", metadata="second")

    async def spread() -> dict[str, AgentDispatch] | None:
        jobs = await api.list_dispatches(room)
        assert [j.id for j in jobs] == [first.id, second.id], jobs
        by_worker = {j.worker_id: j for j in jobs if j.state == "running"}
        return by_worker if set(by_worker) == {"AW_stays", "AW_doomed"} else None

    by_worker = await eventually(spread, what="one job on each worker", timeout=WAIT)
    assert by_worker is not None
    return by_worker["AW_stays"], by_worker["AW_doomed"]


async def check_after_the_loss(
    api: stagecast.RoomService,
    nats_url: str,
    room: str,
    kept: AgentDispatch,
    moved: AgentDispatch,
    runs: Runs,
) -> None:
    """Both jobs listed and running on AW_stays: `kept` at its first attempt (never offered
    again), `moved` at its second (offered once more, taken once)."""

    async def settled() -> bool:
        jobs = {j.id: (j.state, j.worker_id, j.attempt) for j in await api.list_dispatches(room)}
        assert jobs == {
            kept.id: ("running", "AW_stays", 1),
            moved.id: ("running", "AW_stays", 2),
        }, jobs
        return True

    await eventually(settled, what="the lost worker's job moved, the other kept", timeout=WAIT)
    # "running" is the worker's acceptance; its entrypoint starts once it has joined the room.
    await eventually(lambda: runs.count == {kept.id: 1, moved.id: 1}, what="each job run once")
    assert runs.count == {kept.id: 1, moved.id: 1}
    events = await agent_events(nats_url, room, 4)
    summary = [
        (type(e).__name__, e.dispatch.id, e.dispatch.attempt)
        for e in events
        if isinstance(e, (AgentJobStartedEvent, AgentJobEndedEvent))
    ]
    assert sorted(summary[:2]) == sorted(
        [("AgentJobStartedEvent", kept.id, 1), ("AgentJobStartedEvent", moved.id, 1)]
    )
    assert summary[2:] == [
        ("AgentJobEndedEvent", moved.id, 1),
        ("AgentJobStartedEvent", moved.id, 2),
    ]
    lost = events[2]
    assert isinstance(lost, AgentJobEndedEvent) and lost.reason == "worker_lost"


async def test_jobs_outlive_a_kill_9_of_the_statekeeper(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'sk.db'}"
    room = "agents-restart"
    runs = Runs()
    async with NatsServer(tmp_path / "nats") as server:
        edge = EdgeConfig(nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        async with (
            solo_statekeeper(server.url, database_url, tmp_path / "sk1.log") as first_pid,
            running_edge(edge) as url,
            stagecast.RoomService(url, API_KEY, API_SECRET) as api,
            in_process_worker(url, server.url, "AW_stays", runs.stay),
            worker_process(url, server.url, "AW_doomed", tmp_path / "worker.log") as doomed,
        ):
            await api.create_room(room)
            kept, moved = await two_jobs_on_two_workers(api, room)
            os.kill(first_pid, signal.SIGKILL)
            doomed.kill()  # dies while no statekeeper runs: nobody sees it go
            await asyncio.wait_for(doomed.wait(), 10)
            async with solo_statekeeper(server.url, database_url, tmp_path / "sk2.log"):
                await check_after_the_loss(api, server.url, room, kept, moved, runs)


@pytest.mark.postgres
async def test_jobs_outlive_a_lease_takeover(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    runs = Runs()
    async with NatsServer(tmp_path / "nats") as server:
        nc = await nats.connect(server.url)
        edge = EdgeConfig(nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        try:
            async with (
                keepers(server, postgres_url, tmp_path) as (a, b),
                running_edge(edge) as url,
                stagecast.RoomService(url, API_KEY, API_SECRET) as api,
                in_process_worker(url, server.url, "AW_stays", runs.stay),
                worker_process(url, server.url, "AW_doomed", tmp_path / "worker.log") as doomed,
            ):
                held = await split_between(nc, a, b)
                room = room_in(next(p for p, owner in held.items() if owner == b.owner))
                await api.create_room(room)
                kept, moved = await two_jobs_on_two_workers(api, room)
                b.proc.kill()  # kill -9 the room's statekeeper: a takes its partitions over
                doomed.kill()
                await asyncio.wait_for(doomed.wait(), 10)
                await check_after_the_loss(api, server.url, room, kept, moved, runs)
        finally:
            await nc.close()


async def test_a_job_that_ended_while_no_statekeeper_ran_ends_unreported(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'sk.db'}"
    room = "agents-unreported"
    release = asyncio.Event()

    async def until_released(ctx: JobContext) -> None:
        await release.wait()

    async with NatsServer(tmp_path / "nats") as server:
        edge = EdgeConfig(nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        async with (
            solo_statekeeper(server.url, database_url, tmp_path / "sk1.log") as first_pid,
            running_edge(edge) as url,
            stagecast.RoomService(url, API_KEY, API_SECRET) as api,
            in_process_worker(url, server.url, "AW_quiet", until_released) as quiet,
        ):
            await api.create_room(room)
            job = await api.dispatch_agent(room, "assistant")

            async def running() -> bool:
                (listed,) = await api.list_dispatches(room)
                assert (listed.state, listed.worker_id) == ("running", "AW_quiet"), listed
                return True

            await eventually(running, what="the job running", timeout=WAIT)
            os.kill(first_pid, signal.SIGKILL)
            release.set()  # the job ends; its report reaches no statekeeper
            await eventually(lambda: not quiet.jobs, what="the job over", timeout=WAIT)
            async with solo_statekeeper(server.url, database_url, tmp_path / "sk2.log"):

                async def ended() -> bool:
                    (listed,) = await api.list_dispatches(room)
                    assert (listed.id, listed.state, listed.attempt) == (job.id, "ended", 1)
                    return True

                await eventually(ended, what="the job ended, unreported", timeout=WAIT)
                events = await agent_events(server.url, room, 2)
                last = events[-1]
                assert isinstance(last, AgentJobEndedEvent) and last.reason == "unreported"


async def test_a_job_taken_just_before_the_kill_is_recorded_from_the_workers_beat(
    tmp_path: Path,
) -> None:
    """The statekeeper died after a worker accepted its offer, before the log recorded it:
    the next statekeeper finds the job pending, and the worker's beat naming it, so records
    it as running there rather than offering it to the idle worker."""
    from schemas.agents import AgentJobAccepted, AgentJobOffer
    from schemas.codec import decode, encode
    from schemas.subjects import agent_offers

    database_url = f"sqlite+aiosqlite:///{tmp_path / 'sk.db'}"
    room = "agents-adopted"
    runs = Runs()
    async with NatsServer(tmp_path / "nats") as server:
        nc = await nats.connect(server.url)
        edge = EdgeConfig(nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        try:
            async with (
                running_edge(edge) as url,
                stagecast.RoomService(url, API_KEY, API_SECRET) as api,
            ):
                async with solo_statekeeper(server.url, database_url, tmp_path / "sk1.log") as pid:
                    await api.create_room(room)
                    job = await api.dispatch_agent(room, "assistant")  # no worker: pending
                    os.kill(pid, signal.SIGKILL)
                async with in_process_worker(url, server.url, "AW_took", runs.stay) as took:
                    # the offer the killed statekeeper made, accepted; its record never made
                    reply = await nc.request(
                        agent_offers("assistant"), encode(AgentJobOffer(dispatch=job)), 5
                    )
                    assert isinstance(decode(reply.data), AgentJobAccepted)
                    async with (
                        in_process_worker(url, server.url, "AW_idle", runs.stay) as idle,
                        solo_statekeeper(server.url, database_url, tmp_path / "sk2.log"),
                    ):

                        async def recorded() -> bool:
                            (listed,) = await api.list_dispatches(room)
                            assert (listed.state, listed.worker_id, listed.attempt) == (
                                "running",
                                "AW_took",
                                1,
                            ), listed
                            return True

                        await eventually(recorded, what="the job recorded on AW_took", timeout=WAIT)
                        assert took.jobs == [job.id] and idle.jobs == []
                        assert runs.count == {job.id: 1}
        finally:
            await nc.close()
