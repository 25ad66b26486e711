"""Agent workers: take agent jobs from NATS and run an entrypoint in each job's room.

```python
async def entrypoint(ctx: stagecast.agents.JobContext) -> None:
    await ctx.room.local_participant.send_text("hello", topic="chat")
    await ctx.wait_for_disconnect()

await stagecast.agents.Worker(url, api_key, api_secret, agent_name="assistant",
                              entrypoint=entrypoint, nats_url="nats://...").run()
```

A worker announces itself on `stagecast.agent.beat` (its id, agent name, jobs, capacity);
the dispatcher offers jobs on ``stagecast.agent.jobs.<agent name>``, where the workers of the
name share a queue group (any one of them gets each offer), and the worker takes one only
while it runs fewer jobs than its capacity and the offer's `max_jobs` (the dispatcher's
way to reach a least loaded worker); it still answers offers on its own
``stagecast.agent.worker.<id>.job``. `start` returns once NATS has both subscriptions, so a
worker that says it is ready gets the next offer. For each job it accepts,
it joins the room through the edge at `url` with a `kind="agent"` token it mints (identity
`agent-<job id>`, so a job taken over after a worker died replaces the dead session), runs
`entrypoint(ctx)`, leaves, and reports the end on `stagecast.agent.ended`. The job ends when
the entrypoint returns or raises, or when the room disconnects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from access.tokens import generate_token
from roomlog.connect import NatsAuth, connect
from roomlog.natslink import NatsLink
from schemas import subjects
from schemas.agents import (
    WORKER_BEAT_INTERVAL,
    AgentDispatch,
    AgentJobAccepted,
    AgentJobEnded,
    AgentJobOffer,
    AgentWorkerBeat,
)
from schemas.client import Error
from schemas.codec import SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.models import Grant
from stagecast.client import ConnectOptions, Room, join

log = logging.getLogger("stagecast.agents")

AGENT_GRANT = Grant(
    can_publish=True, can_subscribe=True, can_publish_data=True, can_subscribe_data=True
)


@dataclasses.dataclass(slots=True)
class JobContext:
    """What an entrypoint gets: the joined `room` and the job (`dispatch`)."""

    room: Room
    dispatch: AgentDispatch
    worker_id: str

    @property
    def job_id(self) -> str:
        return self.dispatch.id

    @property
    def room_id(self) -> str:
        return self.dispatch.room_id

    @property
    def agent_name(self) -> str:
        return self.dispatch.agent_name

    @property
    def metadata(self) -> str:
        """What the backend passed to `dispatch_agent`."""
        return self.dispatch.metadata

    async def wait_for_disconnect(self) -> None:
        """Return once the room has disconnected this agent (room deleted, removed, ...)."""
        done = asyncio.Event()
        self.room.on("disconnected", lambda *_: done.set())
        if self.room.connection_state.value == "disconnected":
            return
        await done.wait()


Entrypoint = Callable[[JobContext], Awaitable[None]]


class Worker:
    """Takes jobs for `agent_name` and runs `entrypoint` in each (see the module docstring).

    `url` is an edge's URL (where the agent joins rooms); `nats_url` the NATS the dispatcher
    uses (default `$STAGECAST_NATS_URL`, else ``nats://127.0.0.1:4222``), logged in with the
    `agent` role: a password in the URL, or `nats_auth`'s files (default: from the
    ``STAGECAST_NATS_CREDS`` / ``STAGECAST_NATS_TLS_*`` variables; `stagecast up` prints its
    agent key). `capacity` bounds the jobs it runs at once (offers beyond are refused).
    `auto_subscribe=False` joins without subscribing to everything (the entrypoint
    subscribes to what it needs, e.g. audio only).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        agent_name: str = "assistant",
        entrypoint: Entrypoint | None = None,
        *,
        nats_url: str | None = None,
        nats_auth: NatsAuth | None = None,
        capacity: int = 16,
        worker_id: str | None = None,
        beat_interval: float = WORKER_BEAT_INTERVAL,
        options: ConnectOptions | None = None,
        auto_subscribe: bool = True,
    ) -> None:
        if entrypoint is None:
            raise ValueError("a Worker needs an entrypoint (an async function of a JobContext)")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.url = url
        self.agent_name = agent_name
        self.entrypoint = entrypoint
        self.nats_url = nats_url or os.environ.get("STAGECAST_NATS_URL", "nats://127.0.0.1:4222")
        self.capacity = capacity
        self.worker_id = worker_id or f"AW_{secrets.token_urlsafe(9)}"
        self._api_key = api_key
        self._api_secret = api_secret
        self._nats_auth = nats_auth if nats_auth is not None else NatsAuth.from_env()
        self._beat_interval = beat_interval
        self._options = options or ConnectOptions()
        self._auto_subscribe = auto_subscribe
        self._nc: Any = None
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._beater: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def jobs(self) -> list[str]:
        """The ids of the jobs running now."""
        return list(self._jobs)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect to NATS, take offers and start beating."""
        self._nc = await connect(
            self.nats_url,
            name=f"stagecast-agent-{self.worker_id}",
            link=NatsLink("agent", log),
            role="agent",
            auth=self._nats_auth,
        )
        await self._nc.subscribe(
            subjects.agent_offers(self.agent_name),
            queue=subjects.agent_offer_queue(self.agent_name),
            cb=self._on_offer,
        )
        await self._nc.subscribe(subjects.agent_worker_jobs(self.worker_id), cb=self._on_offer)
        await self._nc.flush()  # ready means ready: the server has the subscriptions
        await self._beat()
        self._beater = asyncio.create_task(self._beat_forever())

    async def run(self) -> None:
        """`start`, then run until `aclose` (or cancellation)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop: cancel running jobs (each leaves its room and is reported ended). Idempotent."""
        if self._stopped.is_set() and self._nc is None:
            return
        self._stopped.set()
        if self._beater is not None:
            self._beater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beater
            self._beater = None
        jobs = list(self._jobs.values())
        for task in jobs:
            task.cancel()
        if jobs:
            await asyncio.wait(jobs, timeout=10)
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()

    # ------------------------------------------------------------------ NATS

    async def _beat(self) -> None:
        beat = AgentWorkerBeat(
            worker_id=self.worker_id,
            agent_name=self.agent_name,
            jobs=tuple(self._jobs),
            capacity=self.capacity,
        )
        await self._nc.publish(subjects.AGENT_BEAT, encode(beat))

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._beat_interval)
            try:
                await self._beat()
            except Exception as exc:
                log.info("agent worker beat not sent: %r", exc)

    async def _on_offer(self, msg: Any) -> None:
        try:
            offer = decode(msg.data)
        except SchemaError as exc:
            await msg.respond(encode(Error(code=exc.code, message=str(exc))))
            return
        if not isinstance(offer, AgentJobOffer):
            await msg.respond(encode(Error(code=ErrorCode.UNKNOWN_TYPE, message=offer.TYPE)))
            return
        job = offer.dispatch
        refusal = self._refusal(offer) if job.id not in self._jobs else None
        if refusal is not None:
            await msg.respond(encode(Error(code=ErrorCode.UNAVAILABLE, message=refusal)))
            return
        if job.id not in self._jobs:
            self._jobs[job.id] = asyncio.create_task(self._run_job(job))
        await msg.respond(encode(AgentJobAccepted(job_id=job.id, worker_id=self.worker_id)))
        with contextlib.suppress(Exception):  # at once: should the reply be lost, the beat
            await self._beat()  # tells the dispatcher this worker runs the job

    def _refusal(self, offer: AgentJobOffer) -> str | None:
        """Why this worker does not take a new job now (None: it does)."""
        running = len(self._jobs)
        if self._stopped.is_set():
            return "this worker is stopping"
        if running >= self.capacity:
            return f"this worker is full ({running} jobs)"
        if offer.max_jobs and running >= offer.max_jobs:
            return f"this worker runs {running} jobs; the offer is for fewer than {offer.max_jobs}"
        return None

    # ------------------------------------------------------------------ jobs

    async def _run_job(self, job: AgentDispatch) -> None:
        reason = "completed"
        room: Room | None = None
        try:
            token = generate_token(
                self._api_key,
                self._api_secret,
                room_id=job.room_id,
                participant_id=f"agent-{job.id}",
                name=job.agent_name,
                kind="agent",
                grant=AGENT_GRANT,
                metadata=job.metadata or None,
            )
            room = await join(
                self.url, token, options=self._options, auto_subscribe=self._auto_subscribe
            )
            context = JobContext(room=room, dispatch=job, worker_id=self.worker_id)
            await self._until_disconnected(room, self.entrypoint(context))
            if room.connection_state.value == "disconnected":
                reason = "disconnected"
        except asyncio.CancelledError:
            reason = "worker_stopped"
        except Exception as exc:
            log.exception("agent job %s failed", job.id)
            reason = f"failed: {type(exc).__name__}: {exc}"[:256]
        finally:
            if room is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(room.leave(), 5)
            self._jobs.pop(job.id, None)
            await self._report_ended(job, reason)

    @staticmethod
    async def _until_disconnected(room: Room, work: Awaitable[None]) -> None:
        """Run `work`; cancel it if the room disconnects first."""
        task = asyncio.ensure_future(work)
        gone = asyncio.Event()
        room.on("disconnected", lambda *_: gone.set())
        waiter = asyncio.create_task(gone.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _report_ended(self, job: AgentDispatch, reason: str) -> None:
        if self._nc is None:
            return
        report = AgentJobEnded(job_id=job.id, worker_id=self.worker_id, reason=reason)
        with contextlib.suppress(Exception):
            await self._nc.publish(subjects.AGENT_ENDED, encode(report))
            await self._beat()


__all__ = ["AGENT_GRANT", "Entrypoint", "JobContext", "Worker"]
