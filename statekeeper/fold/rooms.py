"""The fold on rooms: opening (explicitly or by a first join), metadata, closing."""

from __future__ import annotations

from schemas.agents import AgentDispatch
from schemas.api import OkReply, RoomReply
from schemas.client import Disconnect, RoomUpdated
from schemas.errors import ErrorCode
from schemas.events import RoomFinished, RoomStarted
from schemas.log import (
    LogEvent,
    RoomCreateRequested,
    RoomDeleteRequested,
    RoomMetadataSet,
    RoomTimedOut,
)
from statekeeper.fold.dispatch import handles, on_room
from statekeeper.fold.jobs import add_jobs, forget_jobs
from statekeeper.fold.replies import error, reply
from statekeeper.outcomes import Broadcast, Outcome, PublicEvent, RoomEnded, TimerDue
from statekeeper.state import Room, State, room_info


def open_room(state: State, seq: int, event: LogEvent, room_sid: str, out: list[Outcome]) -> Room:
    """Open a room instance (sid `room_sid`) at `seq` and announce it."""
    room = Room(
        id=event.room_id,
        sid=room_sid,
        created_at=event.at,
        empty_since=event.at,
        created_seq=seq,
    )
    state.rooms[room.id] = room
    out.append(
        PublicEvent(
            room.id, "room_started", RoomStarted(id=f"{seq}.rs", at=event.at, room=room_info(room))
        )
    )
    return room


def arm_room_timeout(room: Room, at: int, timeout_s: int, out: list[Outcome]) -> None:
    """The room is empty from `at`: it closes `timeout_s` later unless someone comes."""
    room.empty_since = at
    room.closes_at = at + timeout_s * 1000
    due = RoomTimedOut(room_id=room.id, at=at + timeout_s * 1000, room_sid=room.sid, empty_since=at)
    out.append(TimerDue(due))


def _close_room(
    state: State, seq: int, room: Room, at: int, reason: str, out: list[Outcome]
) -> None:
    del state.rooms[room.id]
    forget_jobs(state, room)
    finished = RoomFinished(id=f"{seq}.rf", at=at, room=room_info(room), reason=reason)
    out.append(PublicEvent(room.id, "room_finished", finished))
    out.append(RoomEnded(room.id))


@handles(RoomCreateRequested)
def _create_room(state: State, seq: int, event: RoomCreateRequested, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    if room is None:
        room = open_room(state, seq, event, event.room_sid, out)
        room.max_participants = max(0, event.max_participants)
        room.empty_timeout = max(0, event.empty_timeout)
        room.departure_timeout = max(0, event.departure_timeout)
        room.metadata = event.metadata
        room.livestream = event.livestream
        arm_room_timeout(room, event.at, room.empty_timeout, out)
    jobs = [
        AgentDispatch(
            id=spec.dispatch_id, room_id=room.id, agent_name=spec.agent_name, created_at=event.at
        )
        for spec in event.agents
    ]
    refusal = add_jobs(state, room, jobs)  # a room that exists already gets them too
    if refusal is not None:
        error(event, ErrorCode.RATE_LIMITED, refusal, out)
        return
    reply(event, RoomReply(room=room_info(room)), out)


@on_room(RoomDeleteRequested)
def _delete_room(
    state: State, seq: int, event: RoomDeleteRequested, room: Room, out: list[Outcome]
) -> None:
    # One broadcast closes every socket of the room, on every edge, whatever its tier.
    out.append(Broadcast(room.id, "speakers", Disconnect(reason=ErrorCode.ROOM_DELETED.value)))
    _close_room(state, seq, room, event.at, ErrorCode.ROOM_DELETED.value, out)
    reply(event, OkReply(), out)


@on_room(RoomMetadataSet)
def _room_metadata(
    state: State, seq: int, event: RoomMetadataSet, room: Room, out: list[Outcome]
) -> None:
    room.metadata = event.metadata
    info = room_info(room)
    out.append(Broadcast(room.id, "speakers", RoomUpdated(seq=seq, room=info)))
    reply(event, RoomReply(room=info), out)


@handles(RoomTimedOut)
def _room_timeout(state: State, seq: int, event: RoomTimedOut, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    if room is None or room.sid != event.room_sid or room.sessions:
        return
    if room.empty_since != event.empty_since:
        return  # someone came and went since this timer was armed; a newer one is due
    _close_room(state, seq, room, event.at, ErrorCode.ROOM_CLOSED.value, out)
