"""Agent dispatch on NATS: the shell around `statekeeper.dispatch.DispatchTable`.

Serves `stagecast.agent.api` (dispatch a job, list a room's jobs), follows worker heartbeats
(`stagecast.agent.beat`) and job-ended reports (`stagecast.agent.ended`), offers each pending
job to the least loaded live worker of its agent name (a request on the worker's own
subject) and appends `agent_job_started` / `agent_job_ended` to the public events. A worker
silent past `worker_timeout_ms` is gone: its jobs end with reason `worker_lost` and are
offered to another worker.

The jobs live in this process (with several statekeepers, in the one whose queue-group
subscription took the request): a restart forgets them (running agents carry on, but are no
longer listed or re-dispatched).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg

from schemas import subjects
from schemas.agents import (
    AgentDispatch,
    AgentJobAccepted,
    AgentJobEnded,
    AgentJobEndedEvent,
    AgentJobOffer,
    AgentJobStartedEvent,
    AgentWorkerBeat,
    DispatchAgentRequest,
    DispatchListReply,
    DispatchReply,
    ListDispatchesRequest,
)
from schemas.client import Error
from schemas.codec import Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from statekeeper.dispatch import DispatchTable, TooManyDispatches

log = logging.getLogger("stagecast.statekeeper")

ELSEWHERE_KEPT = 10_000
"""How many jobs of other statekeepers are remembered, the least recently told forgotten."""
OFFER_TIMEOUT = 2.0
"""How long a worker has to accept an offered job before the next one is asked."""

PublishEvent = Callable[[str, str, Message, str], Awaitable[Any]]
"""`(room_id, event name, message, event id)`: append one public event."""


class AgentDispatcher:
    """Dispatches agent jobs to workers (see the module docstring)."""

    def __init__(
        self,
        nc: Any,
        publish_event: PublishEvent,
        clock: Callable[[], int],
        *,
        worker_timeout_ms: int = 3000,
        tick: float = 0.25,
    ) -> None:
        self.nc = nc
        self.table = DispatchTable(worker_timeout_ms)
        self._publish_event = publish_event
        self._clock = clock
        self._tick = tick
        self._subs: list[Any] = []
        self._ticker: asyncio.Task[None] | None = None
        self._offering: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.elsewhere: dict[str, AgentDispatch] = {}
        """Jobs other statekeepers run, as their public events told (for listing)."""

    async def start(self) -> None:
        self._subs.append(await self.nc.subscribe(subjects.AGENT_BEAT, cb=self._on_beat))
        self._subs.append(await self.nc.subscribe(subjects.AGENT_ENDED, cb=self._on_ended))
        self._subs.append(
            await self.nc.subscribe(subjects.AGENT_API, queue="statekeeper", cb=self._on_request)
        )
        for name in ("agent_job_started", "agent_job_ended"):
            self._subs.append(
                await self.nc.subscribe(f"stagecast.events.*.{name}", cb=self._on_event)
            )
        self._ticker = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Unsubscribe and stop watching workers. Idempotent."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ requests

    async def answer(self, request: Message) -> Message:
        """The reply to one dispatch API request."""
        if isinstance(request, DispatchAgentRequest):
            job = AgentDispatch(
                id=f"AJ_{secrets.token_urlsafe(9)}",
                room_id=request.room_id,
                agent_name=request.agent_name,
                metadata=request.metadata,
                created_at=self._clock(),
            )
            try:
                self.table.add(job)
            except TooManyDispatches as exc:
                return Error(code=ErrorCode.RATE_LIMITED, message=str(exc))
            await self._offer(job.id)
            return DispatchReply(dispatch=self.table.jobs[job.id])
        if isinstance(request, ListDispatchesRequest):
            own = self.table.in_room(request.room_id)
            others = [
                j
                for j in self.elsewhere.values()
                if j.room_id == request.room_id and j.id not in self.table.jobs
            ]
            jobs = sorted([*own, *others], key=lambda j: (j.created_at, j.id))
            return DispatchListReply(dispatches=tuple(jobs[:1000]))
        return Error(
            code=ErrorCode.UNKNOWN_TYPE, message=f"{request.TYPE} is not a dispatch request"
        )

    async def _on_request(self, msg: Msg) -> None:
        try:
            request = decode(msg.data)
        except SchemaError as exc:
            reply: Message = Error(code=exc.code, message=str(exc))
        else:
            reply = await self.answer(request)
        if msg.reply:
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, encode(reply))

    async def _on_event(self, msg: Msg) -> None:
        """Another statekeeper's job started or ended: remember it for `list_dispatches`."""
        try:
            event = decode(msg.data)
        except SchemaError:
            return
        if not isinstance(event, (AgentJobStartedEvent, AgentJobEndedEvent)):
            return
        job = event.dispatch
        if job.id in self.table.jobs:
            return  # one of ours: the table knows better
        if isinstance(event, AgentJobEndedEvent):
            job = msgspec.structs.replace(job, state="ended")
        self.elsewhere.pop(job.id, None)
        self.elsewhere[job.id] = job
        while len(self.elsewhere) > ELSEWHERE_KEPT:
            del self.elsewhere[next(iter(self.elsewhere))]

    # ------------------------------------------------------------------ workers

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        if isinstance(beat, AgentWorkerBeat):
            known = beat.worker_id in self.table.workers
            self.table.beat(beat, self._clock())
            if not known:
                self._offer_pending()  # a new worker: jobs waiting for one may go now

    async def _on_ended(self, msg: Msg) -> None:
        try:
            report = decode(msg.data)
        except SchemaError:
            return
        if not isinstance(report, AgentJobEnded):
            return
        job = self.table.ended(report.job_id, report.worker_id)
        if job is not None:
            await self._event_ended(job, report.reason or "completed")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                for job in self.table.lost_workers(self._clock()):
                    log.warning("agent worker %s lost: job %s offered again", job.worker_id, job.id)
                    await self._event_ended(job, "worker_lost")
                self._offer_pending()
            except Exception:
                log.exception("agent dispatch tick failed")

    def _offer_pending(self) -> None:
        for job in self.table.pending():
            if job.id not in self._offering:
                task = asyncio.create_task(self._offer(job.id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _offer(self, job_id: str) -> None:
        """Offer a pending job to live workers, least loaded first, until one accepts."""
        if job_id in self._offering:
            return
        self._offering.add(job_id)
        try:
            tried: set[str] = set()
            while True:
                job = self.table.jobs.get(job_id)
                if job is None or job.state != "pending":
                    return
                candidates = self.table.candidates(job.agent_name, self._clock(), frozenset(tried))
                if not candidates:
                    return  # stays pending: offered again when a worker appears
                worker_id = candidates[0]
                tried.add(worker_id)
                self.table.reserve(job_id, worker_id)
                if await self._ask(worker_id, job):
                    started = self.table.started(job_id, worker_id)
                    if started is not None:
                        await self._event_started(started)
                    return
                self.table.release(job_id, worker_id)
        finally:
            self._offering.discard(job_id)

    async def _ask(self, worker_id: str, job: AgentDispatch) -> bool:
        offer = AgentJobOffer(dispatch=job)
        try:
            reply = await self.nc.request(
                subjects.agent_worker_jobs(worker_id), encode(offer), timeout=OFFER_TIMEOUT
            )
            answer = decode(reply.data)
        except Exception as exc:
            log.info("agent worker %s did not take job %s: %r", worker_id, job.id, exc)
            return False
        return isinstance(answer, AgentJobAccepted) and answer.job_id == job.id

    # ------------------------------------------------------------------ public events

    async def _event_started(self, job: AgentDispatch) -> None:
        event_id = f"{job.id}.{job.attempt}.started"
        message = AgentJobStartedEvent(
            id=event_id, at=self._clock(), room_id=job.room_id, dispatch=job
        )
        await self._publish(job.room_id, "agent_job_started", message, event_id)

    async def _event_ended(self, job: AgentDispatch, reason: str) -> None:
        event_id = f"{job.id}.{job.attempt}.ended"
        message = AgentJobEndedEvent(
            id=event_id, at=self._clock(), room_id=job.room_id, dispatch=job, reason=reason
        )
        await self._publish(job.room_id, "agent_job_ended", message, event_id)

    async def _publish(self, room_id: str, name: str, message: Message, event_id: str) -> None:
        try:
            await self._publish_event(room_id, name, message, event_id)
        except Exception as exc:
            log.warning("public event %s %s not appended: %r", name, event_id, exc)


async def start_dispatcher(
    nc: Any, publish_event: PublishEvent, worker_timeout_ms: int
) -> AgentDispatcher:
    """An `AgentDispatcher` on the statekeeper's clock, started (both statekeeper shells)."""
    from schemas.clock import now_ms

    dispatcher = AgentDispatcher(nc, publish_event, now_ms, worker_timeout_ms=worker_timeout_ms)
    await dispatcher.start()
    return dispatcher
