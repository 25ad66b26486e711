"""The fold on agent jobs: asked for, taken by a worker, over, taken back.

A job lives in its room (`Room.dispatches`), so it is in the room's snapshot and in every
replay of its log: whichever statekeeper folds the room next (after a restart or a lease
takeover) knows every job, which worker runs it and at which attempt. The dispatcher
(`statekeeper.agents`) only appends `DispatchStarted` / `DispatchEnded`; what they change is
decided here, and a stale one (another attempt, another worker) changes nothing.
"""

from __future__ import annotations

import msgspec

from schemas.agents import AgentDispatch, AgentJobEndedEvent, AgentJobStartedEvent, DispatchReply
from schemas.errors import ErrorCode
from schemas.log import (
    DispatchCreated,
    DispatchDeleted,
    DispatchEnded,
    DispatchStarted,
    LogEvent,
)
from statekeeper.fold.dispatch import handles, on_room
from statekeeper.fold.jobs import add_jobs
from statekeeper.fold.replies import error, reply
from statekeeper.fold.sessions import kick
from statekeeper.outcomes import Outcome, PublicEvent
from statekeeper.state import Room, State

WORKER_LOST = "worker_lost"
"""The `DispatchEnded` reason of a worker that stopped beating: the job is pending again."""
DELETED = "deleted"
"""The `agent_job_ended` reason of a running job taken back by `delete_dispatch`."""


def agent_identity(job_id: str) -> str:
    """The participant id a job's agent joins with (`stagecast.agents.Worker`)."""
    return f"agent-{job_id}"


def _job(state: State, room_id: str, job_id: str) -> tuple[Room, AgentDispatch] | None:
    room = state.rooms.get(room_id)
    job = room.dispatches.get(job_id) if room is not None else None
    if room is None or job is None:
        return None
    return room, job


@on_room(DispatchCreated)
def _create(state: State, seq: int, event: DispatchCreated, room: Room, out: list[Outcome]) -> None:
    job = AgentDispatch(
        id=event.dispatch_id,
        room_id=room.id,
        agent_name=event.agent_name,
        metadata=event.metadata,
        created_at=event.at,
    )
    refusal = add_jobs(state, room, [job])
    if refusal is not None:
        error(event, ErrorCode.RATE_LIMITED, refusal, out)
        return
    reply(event, DispatchReply(dispatch=room.dispatches[event.dispatch_id]), out)


@on_room(DispatchDeleted)
def _delete(state: State, seq: int, event: DispatchDeleted, room: Room, out: list[Outcome]) -> None:
    job = room.dispatches.pop(event.dispatch_id, None)
    if job is None:
        error(event, ErrorCode.DISPATCH_NOT_FOUND, f"no agent job {event.dispatch_id!r}", out)
        return
    state.open_jobs.pop(job.id, None)
    if job.state == "running":
        _public_ended(event, job, DELETED, out)
    session = room.session_by_identity(agent_identity(job.id))
    if session is not None:
        kick(room, session, seq, event.at, ErrorCode.REMOVED, out)
    reply(event, DispatchReply(dispatch=job), out)


@handles(DispatchStarted)
def _started(state: State, seq: int, event: DispatchStarted, out: list[Outcome]) -> None:
    found = _job(state, event.room_id, event.dispatch_id)
    if found is None:
        return
    room, job = found
    if job.state != "pending" or job.attempt != event.attempt:
        return  # taken meanwhile (a stale offer), or ended or taken back
    job = room.dispatches[job.id] = msgspec.structs.replace(
        job, state="running", worker_id=event.worker_id, attempt=job.attempt + 1
    )
    event_id = f"{job.id}.{job.attempt}.started"
    started = AgentJobStartedEvent(id=event_id, at=event.at, room_id=room.id, dispatch=job)
    out.append(PublicEvent(room.id, "agent_job_started", started))


@handles(DispatchEnded)
def _ended(state: State, seq: int, event: DispatchEnded, out: list[Outcome]) -> None:
    found = _job(state, event.room_id, event.dispatch_id)
    if found is None:
        return
    room, job = found
    if job.state != "running" or job.worker_id != event.worker_id:
        return  # not that worker's (any more), or over already
    if event.reason == WORKER_LOST:
        room.dispatches[job.id] = msgspec.structs.replace(job, state="pending", worker_id="")
        _public_ended(event, job, WORKER_LOST, out)  # as it was, on the lost worker
        return
    job = room.dispatches[job.id] = msgspec.structs.replace(job, state="ended")
    state.open_jobs.pop(job.id, None)
    _public_ended(event, job, event.reason or "completed", out)


def _public_ended(event: LogEvent, job: AgentDispatch, reason: str, out: list[Outcome]) -> None:
    event_id = f"{job.id}.{job.attempt}.ended"
    ended = AgentJobEndedEvent(
        id=event_id, at=event.at, room_id=job.room_id, dispatch=job, reason=reason
    )
    out.append(PublicEvent(job.room_id, "agent_job_ended", ended))
