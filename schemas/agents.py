"""Agent dispatch: the server API requests, the worker protocol on NATS, the public events.

A backend asks for an agent (`DispatchAgentRequest`, or `CreateRoomRequest.agents`) and may
take it back (`DeleteDispatchRequest`); each becomes a room-log event, so the jobs are part
of the room's state (`schemas.log`, "agent dispatch"). The dispatcher (in the statekeeper
holding the room's partition) offers a pending job to the workers of its agent name
(`AgentJobOffer`, a NATS request on ``stagecast.agent.jobs.<agent>``, where the workers share
a queue group), bounded by `max_jobs` so that the least loaded worker takes it; one accepts
(`AgentJobAccepted`), joins the room and reports the end (`AgentJobEnded`). Workers announce
themselves with `AgentWorkerBeat` every `WORKER_BEAT_INTERVAL`; a worker silent for longer
than the dispatcher's timeout is gone, and its jobs are offered to another worker.
These subjects and messages are a stable interface (docs/subjects.md), so a worker may be
written in any language.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from schemas.codec import Message, Struct
from schemas.models import Identity, Metadata, Name

WORKER_BEAT_INTERVAL = 1.0
"""Seconds between a worker's heartbeats."""

DispatchState = Literal["pending", "running", "ended"]
AgentNames = Annotated[tuple[Identity, ...], Meta(max_length=16)]


class AgentDispatch(Struct, frozen=True, kw_only=True):
    """One job: an agent asked for in a room, where it runs and how far it got.

    `attempt` counts the workers it was offered to (it grows when a worker dies);
    `worker_id` is empty while no worker has it.
    """

    id: Identity
    room_id: Identity
    agent_name: Identity
    metadata: Metadata = ""
    state: DispatchState = "pending"
    worker_id: Identity = ""
    attempt: Annotated[int, Meta(ge=0)] = 0
    created_at: int = 0


# --------------------------------------------------------------------------- server API


class DispatchAgentRequest(Message, tag="api.dispatch_agent", frozen=True, kw_only=True):
    """Start agent `agent_name` in `room_id` (one job; `metadata` reaches the worker)."""

    room_id: Identity
    agent_name: Identity
    metadata: Metadata = ""


class DeleteDispatchRequest(Message, tag="api.delete_dispatch", frozen=True, kw_only=True):
    """Take job `dispatch_id` back: it is no longer listed, and its agent leaves the room."""

    room_id: Identity
    dispatch_id: Identity


class ListDispatchesRequest(Message, tag="api.list_dispatches", frozen=True, kw_only=True):
    room_id: Identity


class DispatchReply(Message, tag="api.dispatch", frozen=True, kw_only=True):
    dispatch: AgentDispatch


class DispatchListReply(Message, tag="api.dispatches", frozen=True, kw_only=True):
    dispatches: Annotated[tuple[AgentDispatch, ...], Meta(max_length=1000)] = ()


# --------------------------------------------------------------------------- workers


class AgentWorkerBeat(Message, tag="agent.beat", frozen=True, kw_only=True):
    """A worker is alive: its id, agent name, running jobs and how many it takes at most."""

    worker_id: Identity
    agent_name: Identity
    jobs: Annotated[tuple[Identity, ...], Meta(max_length=1024)] = ()
    capacity: Annotated[int, Meta(ge=1)] = 16


class AgentJobOffer(Message, tag="agent.offer", frozen=True, kw_only=True):
    """A job for this worker (a NATS request: answer `AgentJobAccepted` or an `Error`).

    `max_jobs` (0: no bound): take it only while running fewer jobs than this. The
    dispatcher sets it to one more than the least loaded worker's count, so that whichever
    worker of the queue group the offer reaches, only a least loaded one takes it."""

    dispatch: AgentDispatch
    max_jobs: Annotated[int, Meta(ge=0)] = 0


class AgentJobAccepted(Message, tag="agent.accepted", frozen=True, kw_only=True):
    job_id: Identity
    worker_id: Identity


class AgentJobEnded(Message, tag="agent.ended", frozen=True, kw_only=True):
    """A worker's job is over (its entrypoint returned or raised, or the room closed)."""

    job_id: Identity
    worker_id: Identity
    reason: Name = ""


# --------------------------------------------------------------------------- public events


class AgentJobStartedEvent(Message, tag="event.agent_job_started", frozen=True, kw_only=True):
    """A worker accepted a job (again after a worker died: a later `attempt`)."""

    id: Identity
    at: int
    room_id: Identity
    dispatch: AgentDispatch


class AgentJobEndedEvent(Message, tag="event.agent_job_ended", frozen=True, kw_only=True):
    """A job ended: `reason` is the worker's, or `worker_lost` before it is offered again."""

    id: Identity
    at: int
    room_id: Identity
    dispatch: AgentDispatch
    reason: Name = ""


__all__ = [
    "WORKER_BEAT_INTERVAL",
    "AgentDispatch",
    "AgentJobAccepted",
    "AgentJobEnded",
    "AgentJobEndedEvent",
    "AgentJobOffer",
    "AgentJobStartedEvent",
    "AgentWorkerBeat",
    "DeleteDispatchRequest",
    "DispatchAgentRequest",
    "DispatchListReply",
    "DispatchReply",
    "ListDispatchesRequest",
]
