"""Agent dispatch end to end: real nats-server (with role logins), statekeeper, edge, workers."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomlog.roles import Role
from schemas.agents import (
    AgentDispatch,
    AgentJobEndedEvent,
    AgentJobStartedEvent,
    ListDispatchesRequest,
)
from schemas.codec import decode
from stagecast.agents import JobContext, Worker
from stagecast.client import TextStreamReader
from tests.agent_fixtures import agent_events, in_process_worker, worker_process
from tests.agent_jobs import greet, stay
from tests.nats_logins import Logins
from tests.polling import eventually
from tests.stack_fixtures import API_KEY, API_SECRET, OPTIONS, Stack, sdk_stack

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, logins=Logins.fresh()) as running:
        yield running


def worker(
    stack: Stack, worker_id: str, entrypoint: object = stay, name: str = "assistant"
) -> Worker:
    return in_process_worker(stack.url, stack.nats_url(Role.AGENT), worker_id, entrypoint, name)


async def dispatches(stack: Stack, room: str) -> list[AgentDispatch]:
    return await stack.api.list_dispatches(room)


async def public_agent_events(stack: Stack, room: str, count: int) -> list[object]:
    return await agent_events(stack.nats_url(Role.ADMIN), room, count, WAIT)


async def test_two_workers_share_six_dispatches(stack: Stack) -> None:
    room = "agents-spread"
    await stack.api.create_room(room)
    async with worker(stack, "AW_a"), worker(stack, "AW_b"):
        for n in range(6):
            job = await stack.api.dispatch_agent(room, "assistant", metadata=f"job {n}")
            assert job.room_id == room and job.agent_name == "assistant"

        async def all_running() -> bool:
            jobs = await dispatches(stack, room)
            assert len(jobs) == 6 and all(j.state == "running" for j in jobs), jobs
            return True

        await eventually(all_running, what="six running jobs", timeout=WAIT)
        jobs = await dispatches(stack, room)
        per_worker = {w: sum(j.worker_id == w for j in jobs) for w in ("AW_a", "AW_b")}
        assert per_worker == {"AW_a": 3, "AW_b": 3}, per_worker
        assert sorted(j.metadata for j in jobs) == [f"job {n}" for n in range(6)]
        # each job joined the room as an agent of its own
        started = await public_agent_events(stack, room, 6)
        assert {e.dispatch.id for e in started if isinstance(e, AgentJobStartedEvent)} == {
            j.id for j in jobs
        }


async def test_create_room_with_an_agent_that_greets_and_ends(stack: Stack) -> None:
    room = "agents-greet"
    human = await stack.join(stack.token("human", room))
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def on_chat(reader: TextStreamReader, sender_id: str) -> None:
        await heard.put((sender_id, await reader.read_all()))

    human.register_text_stream_handler("chat", on_chat)
    async with worker(stack, "AW_g", greet):
        await stack.api.create_room(room, agents=["assistant"])
        sender, text = await asyncio.wait_for(heard.get(), WAIT)
        assert sender.startswith("agent-AJ_") and text == "hello "

        async def ended() -> bool:
            jobs = await dispatches(stack, room)
            assert [j.state for j in jobs] == ["ended"], jobs
            return True

        await eventually(ended, what="the job to end", timeout=WAIT)
    kinds = [type(e).__name__ for e in await public_agent_events(stack, room, 2)]
    assert kinds == ["AgentJobStartedEvent", "AgentJobEndedEvent"]


async def test_a_job_whose_worker_is_killed_is_taken_by_the_other(
    stack: Stack, tmp_path: Path
) -> None:
    room = "agents-failover"
    await stack.api.create_room(room)
    async with worker_process(
        stack.url, stack.nats_url(Role.AGENT), "AW_doomed", tmp_path / "worker.log"
    ) as doomed:
        job = await stack.api.dispatch_agent(room, "assistant")

        async def running_on(worker_id: str) -> bool:
            jobs = await dispatches(stack, room)
            assert [(j.state, j.worker_id) for j in jobs] == [("running", worker_id)], jobs
            return True

        await eventually(lambda: running_on("AW_doomed"), what="the job on AW_doomed", timeout=30)
        taken: asyncio.Future[JobContext] = asyncio.get_running_loop().create_future()

        async def take(ctx: JobContext) -> None:
            taken.set_result(ctx)
            await ctx.wait_for_disconnect()

        async with worker(stack, "AW_survivor", take):
            os.kill(doomed.pid, signal.SIGKILL)
            await asyncio.wait_for(doomed.wait(), 10)
            ctx = await asyncio.wait_for(taken, WAIT)
            assert ctx.job_id == job.id and ctx.room.local_participant.id == f"agent-{job.id}"
            await eventually(lambda: running_on("AW_survivor"), what="the job moved", timeout=WAIT)
            (moved,) = await dispatches(stack, room)
            assert moved.attempt == 2
            events = await public_agent_events(stack, room, 3)
            assert [type(e).__name__ for e in events] == [
                "AgentJobStartedEvent",
                "AgentJobEndedEvent",
                "AgentJobStartedEvent",
            ]
            assert isinstance(events[1], AgentJobEndedEvent) and events[1].reason == "worker_lost"


async def test_dispatch_works_with_leasing_statekeepers(tmp_path: Path) -> None:
    """A cluster's statekeepers (leases) dispatch too: any of them takes the request."""
    import stagecast
    from edge.config import EdgeConfig
    from edge.main import running_edge
    from processes.natsserver import NatsServer
    from statekeeper.main import StatekeeperConfig, running_statekeeper
    from tests.edge_fixtures import FAST

    async with NatsServer(tmp_path / "nats") as server:
        config = StatekeeperConfig(
            server.url,
            f"sqlite+aiosqlite:///{tmp_path / 'sk.db'}",
            API_SECRET,
            tuning=FAST,
            leases=True,
        )
        edge = EdgeConfig(nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        async with (
            running_statekeeper(config),
            running_edge(edge) as url,
            stagecast.RoomService(url, API_KEY, API_SECRET) as api,
            Worker(
                url,
                API_KEY,
                API_SECRET,
                entrypoint=stay,
                nats_url=server.url,
                worker_id="AW_leased",
                beat_interval=0.2,
                options=OPTIONS,
            ),
        ):
            await api.create_room("leased")
            job = await api.dispatch_agent("leased", "assistant")

            async def running() -> bool:
                jobs = await api.list_dispatches("leased")
                assert [(j.id, j.state, j.worker_id) for j in jobs] == [
                    (job.id, "running", "AW_leased")
                ], jobs
                return True

            await eventually(running, what="the job running", timeout=WAIT)


async def test_the_agent_api_subject_still_dispatches_through_the_log(stack: Stack) -> None:
    """Edges of earlier versions asked `stagecast.agent.api`: any dispatcher answers it (here
    one more that holds no partition, so offers nothing), the job goes through the room log,
    and each job runs once."""
    import logging

    from roomlog.connect import connect
    from roomlog.log import RoomLog
    from roomlog.natslink import NatsLink
    from schemas.agents import DispatchAgentRequest, DispatchListReply, DispatchReply
    from schemas.clock import now_ms
    from schemas.codec import encode
    from schemas.subjects import AGENT_API
    from statekeeper.agents import AgentDispatcher

    nc = await connect(
        stack.nats_url(Role.STATEKEEPER),
        name="second-statekeeper",
        link=NatsLink("statekeeper", logging.getLogger("tests")),
        role="statekeeper",
    )
    second = AgentDispatcher(nc, RoomLog(nc.jetstream()), lambda: [], now_ms)
    await second.start()
    edge = await connect(
        stack.nats_url(Role.EDGE),
        name="earlier-edge",
        link=NatsLink("edge", logging.getLogger("tests")),
        role="edge",
    )
    room = "agents-old-subject"
    try:
        async with worker(stack, "AW_one") as one:
            await stack.api.create_room(room)
            jobs = []
            for _ in range(6):  # the queue group picks either dispatcher each time
                request = DispatchAgentRequest(room_id=room, agent_name="assistant")
                reply = decode((await edge.request(AGENT_API, encode(request), timeout=5)).data)
                assert isinstance(reply, DispatchReply), reply
                jobs.append(reply.dispatch)

            async def all_running_once() -> bool:
                request = ListDispatchesRequest(room_id=room)
                reply = decode((await edge.request(AGENT_API, encode(request), timeout=5)).data)
                assert isinstance(reply, DispatchListReply), reply
                assert sorted((j.id, j.state, j.attempt) for j in reply.dispatches) == sorted(
                    (j.id, "running", 1) for j in jobs
                ), reply
                return True

            await eventually(all_running_once, what="every job running once", timeout=WAIT)
            assert sorted(one.jobs) == sorted(j.id for j in jobs)
    finally:
        await edge.close()
        await second.stop()
        await nc.close()


async def test_a_deleted_dispatch_is_forgotten_and_its_agent_leaves(stack: Stack) -> None:
    from stagecast.errors import DispatchNotFound

    room = "agents-delete"
    await stack.api.create_room(room)
    async with worker(stack, "AW_del") as one:
        job = await stack.api.create_dispatch(room, "assistant", metadata="to delete")
        kept = await stack.api.dispatch_agent(room, "assistant")

        async def both_running() -> bool:
            jobs = await dispatches(stack, room)
            assert sorted(j.state for j in jobs) == ["running", "running"], jobs
            return True

        await eventually(both_running, what="both jobs running", timeout=WAIT)
        deleted = await stack.api.delete_dispatch(room, job.id)
        assert (deleted.id, deleted.state) == (job.id, "running")
        assert [j.id for j in await dispatches(stack, room)] == [kept.id]

        async def agent_gone() -> bool:
            assert one.jobs == [kept.id], one.jobs  # the room disconnected the deleted one
            page = await stack.api.list_participants(room)
            assert [p.id for p in page.participants] == [f"agent-{kept.id}"], page
            return True

        await eventually(agent_gone, what="the deleted job's agent gone", timeout=WAIT)
        with pytest.raises(DispatchNotFound):
            await stack.api.delete_dispatch(room, job.id)
        events = await public_agent_events(stack, room, 3)
        ended = [e for e in events if isinstance(e, AgentJobEndedEvent)]
        assert [(e.dispatch.id, e.reason) for e in ended] == [(job.id, "deleted")]
