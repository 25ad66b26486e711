"""A room's agent jobs as the fold keeps them: added when asked for, forgotten with the room.

Apart from the handlers (`statekeeper.fold.agents`) because opening and closing a room
(`statekeeper.fold.rooms`) adds and forgets jobs too, and the handlers need the sessions'
`kick`, which needs `rooms`.
"""

from __future__ import annotations

from schemas.agents import AgentDispatch
from statekeeper.state import Room, State

MAX_DISPATCHES_PER_ROOM = 64
"""The most jobs one room may have (ended ones included); beyond: `RATE_LIMITED`."""


def add_jobs(state: State, room: Room, jobs: list[AgentDispatch]) -> str | None:
    """Add pending jobs to the room (those it has already are left as they are); the
    refusal's message instead if the room would hold more than `MAX_DISPATCHES_PER_ROOM`."""
    fresh = [job for job in jobs if job.id not in room.dispatches]
    if len(room.dispatches) + len(fresh) > MAX_DISPATCHES_PER_ROOM:
        held = len(room.dispatches)
        return f"room {room.id!r} has {held} agent jobs, at most {MAX_DISPATCHES_PER_ROOM}"
    for job in fresh:
        room.dispatches[job.id] = job
        state.open_jobs[job.id] = room.id
    return None


def forget_jobs(state: State, room: Room) -> None:
    """The room is closing: its jobs are no longer open (their agents are disconnected with
    everyone else)."""
    for job_id in room.dispatches:
        state.open_jobs.pop(job_id, None)
