"""Agent dispatch on NATS: the shell around `statekeeper.dispatch.DispatchTable`.

The jobs are room state, folded from the room log (`statekeeper.fold.agents`): asked for
through the server API (an edge appends `DispatchCreated`, or `RoomCreateRequested.agents`),
taken back (`DispatchDeleted`). This dispatcher, one per statekeeper process, acts on the
open jobs of the partitions the process holds (`keepers`), and writes what happens back
to the room log through the partition's own fenced appends (`Timers.append_soon`):

- a pending job is offered on ``stagecast.agent.jobs.<agent>``, where every worker of the
  agent name listens in one queue group, with `max_jobs` one more than the least loaded
  live worker runs (a more loaded worker refuses, and the offer is made again); the first
  acceptance becomes `DispatchStarted`;
- a worker's job-ended report (`stagecast.agent.ended`) becomes `DispatchEnded`;
- a running job whose worker stopped beating becomes `DispatchEnded(worker_lost)`, which
  makes it pending again (offered to another worker); one whose live worker's beats stopped
  naming it ended unheard (`unreported`);
- a pending job that a live worker's beat names (it accepted, but the `DispatchStarted`
  never made it to the log: a statekeeper killed in between) is recorded as running there
  rather than offered again.

So after a restart or a lease takeover the next holder of the partition knows every job
from the log, and the workers' beats tell it which are still running. Its first offers
wait a beat (`OFFER_GRACE_MS`) and its first verdicts the worker timeout.

It also answers ``stagecast.agent.api`` (the subject edges used before dispatch went through
the room log): a dispatch request is appended to the room log with the caller's inbox as
`reply_to`, and a list request is asked of the statekeeper read API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from roomlog.seam import RoomLogPort
from schemas import subjects
from schemas.agents import (
    AgentDispatch,
    AgentJobAccepted,
    AgentJobEnded,
    AgentJobOffer,
    AgentWorkerBeat,
    DispatchAgentRequest,
    ListDispatchesRequest,
)
from schemas.client import Error
from schemas.codec import SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.log import DispatchCreated, DispatchEnded, DispatchStarted, LogEvent
from statekeeper.dispatch import DispatchTable
from statekeeper.fold.agents import WORKER_LOST
from statekeeper.service import Statekeeper

log = logging.getLogger("stagecast.statekeeper")

OFFER_TIMEOUT = 2.0
"""How long a worker has to answer an offer before it is made again."""
OFFERS_PER_WORKER = 8
"""Offers refused at one `max_jobs` bound, per live worker of the name, before the bound is
lifted (the queue group picks a worker at random: a least loaded one is reached with
probability 1 - (1 - 1/n)^(8n) > 0.9996)."""
QUIET_MS = 1_500
"""How long a job whose offer went unanswered is not offered again: a beat or so, for the
worker that may have taken it to name it (and be recorded as running it)."""
RECORDING_MS = 5_000
"""How long an acceptance appended to the log is waited for before the job is decided
again (the append is retried meanwhile)."""

Keepers = Callable[[], Sequence[Statekeeper]]
"""The statekeepers of the partitions this process holds now."""


class AgentDispatcher:
    """Dispatches the agent jobs of the held partitions (see the module docstring)."""

    def __init__(
        self,
        nc: Any,
        room_log: RoomLogPort,
        keepers: Keepers,
        clock: Callable[[], int],
        *,
        worker_timeout_ms: int = 3000,
        tick: float = 0.1,
    ) -> None:
        self.nc = nc
        self.room_log = room_log
        self.keepers = keepers
        self.table = DispatchTable(worker_timeout_ms, started_at=clock())
        self._clock = clock
        self._tick = tick
        self._subs: list[Any] = []
        self._ticker: asyncio.Task[None] | None = None
        self._offering: set[str] = set()
        self._recording: dict[tuple[str, int, str], int] = {}
        """(job id, attempt, what) appended -> when: not decided again meanwhile."""
        self._quiet_until: dict[str, int] = {}
        """Job id -> until when it is not offered again: an offer went unanswered (a worker
        may have taken it and lost the reply; its beat says so meanwhile)."""
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.table.started_at = self._clock()
        self._subs.append(await self.nc.subscribe(subjects.AGENT_BEAT, cb=self._on_beat))
        self._subs.append(await self.nc.subscribe(subjects.AGENT_ENDED, cb=self._on_ended))
        self._subs.append(
            await self.nc.subscribe(subjects.AGENT_API, queue="statekeeper", cb=self._on_request)
        )
        self._ticker = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Unsubscribe and stop offering. Idempotent."""
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

    # ------------------------------------------------------------------ the old API subject

    async def _on_request(self, msg: Msg) -> None:
        try:
            request = decode(msg.data)
        except SchemaError as exc:
            await self._respond(msg, encode(Error(code=exc.code, message=str(exc))))
            return
        if isinstance(request, DispatchAgentRequest) and msg.reply:
            event = DispatchCreated(
                room_id=request.room_id,
                at=self._clock(),
                dispatch_id=f"AJ_{secrets.token_urlsafe(9)}",
                agent_name=request.agent_name,
                metadata=request.metadata,
                reply_to=msg.reply,  # the fold answers the caller itself
            )
            try:
                await self.room_log.append(event, msg_id=f"agent-api:{event.dispatch_id}")
            except Exception as exc:
                await self._respond(msg, _unavailable(f"not appended: {exc!r}"))
            return
        if isinstance(request, ListDispatchesRequest):
            try:
                reply = await self.nc.request(subjects.STATEKEEPER_API, msg.data, timeout=2.0)
            except Exception as exc:
                await self._respond(msg, _unavailable(f"no statekeeper answered: {exc!r}"))
                return
            await self._respond(msg, bytes(reply.data))
            return
        refusal = Error(code=ErrorCode.UNKNOWN_TYPE, message=f"{request.TYPE} is no dispatch")
        await self._respond(msg, encode(refusal))

    async def _respond(self, msg: Msg, data: bytes) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, data)

    # ------------------------------------------------------------------ workers

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        if isinstance(beat, AgentWorkerBeat) and self.table.beat(beat, self._clock()):
            self._decide_all()  # a new worker: jobs waiting for one may go now

    async def _on_ended(self, msg: Msg) -> None:
        try:
            report = decode(msg.data)
        except SchemaError:
            return
        if not isinstance(report, AgentJobEnded):
            return
        for keeper in self.keepers():
            room = keeper.state.rooms.get(keeper.state.open_jobs.get(report.job_id, ""))
            job = room.dispatches.get(report.job_id) if room is not None else None
            if job is not None:
                ended = DispatchEnded(
                    room_id=job.room_id,
                    at=self._clock(),
                    dispatch_id=job.id,
                    worker_id=report.worker_id,
                    reason=report.reason or "completed",
                )
                key = f"{job.id}:{job.attempt}:{report.worker_id}:ended"
                self._append(keeper, key, ended)

    # ------------------------------------------------------------------ decisions

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                self.table.forget_silent(self._clock())
                self._decide_all()
            except Exception:
                log.exception("agent dispatch tick failed")

    def _decide_all(self) -> None:
        now = self._clock()
        open_ids: set[str] = set()
        for keeper in self.keepers():
            if not keeper.caught_up:
                continue  # its state is not whole yet
            for job_id, room_id in list(keeper.state.open_jobs.items()):
                open_ids.add(job_id)
                room = keeper.state.rooms.get(room_id)
                job = room.dispatches.get(job_id) if room is not None else None
                if job is not None:
                    self._decide(keeper, job, now)
        self.table.prune(open_ids)
        self._recording = {k: t for k, t in self._recording.items() if now - t < RECORDING_MS}
        self._quiet_until = {j: t for j, t in self._quiet_until.items() if t > now}

    def _decide(self, keeper: Statekeeper, job: AgentDispatch, now: int) -> None:
        if job.id in self._offering or self._recorded(job):
            return
        decision = self.table.decide(job, now)
        if decision.action == "offer" and self._quiet_until.get(job.id, 0) <= now:
            self._offering.add(job.id)
            self._spawn(self._offer(keeper, job))
        elif decision.action == "adopt":
            log.info("agent job %s runs on %s, its beat says", job.id, decision.worker_id)
            self._record_start(keeper, job, decision.worker_id)
        elif decision.action in ("lost", "unreported"):
            reason = WORKER_LOST if decision.action == "lost" else "unreported"
            log.warning("agent job %s on worker %s: %s", job.id, job.worker_id, reason)
            ended = DispatchEnded(
                room_id=job.room_id,
                at=now,
                dispatch_id=job.id,
                worker_id=job.worker_id,
                reason=reason,
            )
            self._recording[(job.id, job.attempt, "ended")] = now
            self._append(keeper, f"{job.id}:{job.attempt}:{reason}", ended)

    def _recorded(self, job: AgentDispatch) -> bool:
        """An event about this attempt of the job is on its way to the log."""
        what = "started" if job.state == "pending" else "ended"
        return (job.id, job.attempt, what) in self._recording

    def _record_start(self, keeper: Statekeeper, job: AgentDispatch, worker_id: str) -> None:
        self.table.took(job.id, worker_id)
        self._recording[(job.id, job.attempt, "started")] = self._clock()
        started = DispatchStarted(
            room_id=job.room_id,
            at=self._clock(),
            dispatch_id=job.id,
            worker_id=worker_id,
            attempt=job.attempt,
        )
        self._append(keeper, f"{job.id}:{job.attempt}:started", started)

    def _append(self, keeper: Statekeeper, key: str, event: LogEvent) -> None:
        keeper.timers.append_soon(f"agent:{key}", event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ offers

    async def _offer(self, keeper: Statekeeper, job: AgentDispatch) -> None:
        """Offer a pending job until a worker takes it, or none of the name has room."""
        try:
            refused_at: dict[int, int] = {}
            while self._still_pending(keeper, job):
                if keeper.fence is not None and not keeper.fence.holds():
                    return  # the partition's next holder offers it
                now = self._clock()
                bound = self.table.max_jobs(job.agent_name, now)
                if bound is None:
                    return  # stays pending: offered again when a worker has room
                live = len(self.table.candidates(job.agent_name, now))
                lifted = refused_at.get(bound, 0) >= OFFERS_PER_WORKER * live
                worker_id = await self._ask(job, 0 if lifted else bound)
                if worker_id is _UNANSWERED:
                    self._quiet_until[job.id] = self._clock() + QUIET_MS
                    return  # decided again later, from the beats too
                if worker_id is None and lifted:
                    return  # every worker refused even unbounded: decided again next tick
                if worker_id is not None:
                    self._record_start(keeper, job, worker_id)
                    return
                refused_at[bound] = refused_at.get(bound, 0) + 1
        except _NoWorker:
            return
        finally:
            self._offering.discard(job.id)

    @staticmethod
    def _still_pending(keeper: Statekeeper, job: AgentDispatch) -> bool:
        """The job is as it was offered: pending at that attempt (not taken back, not taken
        by a worker its beat named)."""
        room = keeper.state.rooms.get(job.room_id)
        now = room.dispatches.get(job.id) if room is not None else None
        return now is not None and now.state == "pending" and now.attempt == job.attempt

    async def _ask(self, job: AgentDispatch, max_jobs: int) -> str | None:
        """One offer to the agent name's queue group: the accepting worker's id, None for
        a refusal, or `_UNANSWERED`."""
        offer = AgentJobOffer(dispatch=job, max_jobs=max_jobs)
        try:
            reply = await self.nc.request(
                subjects.agent_offers(job.agent_name), encode(offer), timeout=OFFER_TIMEOUT
            )
            answer = decode(reply.data)
        except nats.errors.NoRespondersError:
            raise _NoWorker() from None
        except Exception as exc:
            log.info("agent job %s offer not answered: %r", job.id, exc)
            return _UNANSWERED
        if isinstance(answer, AgentJobAccepted) and answer.job_id == job.id:
            return answer.worker_id
        return None


_UNANSWERED = "\0unanswered"
"""`_ask`'s answer when no reply came (a worker id never holds a NUL)."""


class _NoWorker(Exception):
    """No worker listens for the agent name (the job waits for one to beat)."""


def _unavailable(message: str) -> bytes:
    return encode(Error(code=ErrorCode.UNAVAILABLE, message=message))


async def start_dispatcher(
    nc: Any, room_log: RoomLogPort, keepers: Keepers, worker_timeout_ms: int
) -> AgentDispatcher:
    """An `AgentDispatcher` on the statekeeper's clock, started (both statekeeper shells)."""
    from schemas.clock import now_ms

    dispatcher = AgentDispatcher(nc, room_log, keepers, now_ms, worker_timeout_ms=worker_timeout_ms)
    await dispatcher.start()
    return dispatcher
