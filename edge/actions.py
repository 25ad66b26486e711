"""Which room-log event each action becomes: one table for the socket and the server API.

A client's action frame (`schemas.client`, answered on the session's subject) and a server
API write (`schemas.api`, answered on a fresh inbox) both become one room-log event, built
by `to_event` from the request and its `Origin`: the room, the time, who asks (a session's
sid, or nobody for the server API) and where the statekeeper's outcome goes. Checks
(grants, tiers, room ids) happen before; this is translation only. Fresh ids (a track's
sid, a room's sid) are made here, in the edge, so that the fold never makes one.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from typing import Any

from schemas.agents import DeleteDispatchRequest, DispatchAgentRequest
from schemas.api import (
    CreateRoomRequest,
    DeleteRoomRequest,
    MuteTrackRequest,
    RemoveParticipantRequest,
    UpdateParticipantRequest,
    UpdateRoomMetadataRequest,
)
from schemas.client import (
    Leave,
    LowerHand,
    MuteTrack,
    PublishTrack,
    RaiseHand,
    SetAttributes,
    SetMetadata,
    Subscribe,
    UnpublishTrack,
    Unsubscribe,
)
from schemas.codec import Message
from schemas.log import (
    AgentJobSpec,
    AttributesSet,
    DispatchCreated,
    DispatchDeleted,
    LeaveRequested,
    LogEvent,
    MetadataSet,
    ParticipantRemoveRequested,
    ParticipantUpdateRequested,
    RoomCreateRequested,
    RoomDeleteRequested,
    RoomMetadataSet,
    SubscriptionRequested,
    TrackMuteForced,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.models import HAND_ATTRIBUTE, HAND_RAISED, TrackInfo


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """Where a request comes from and where its outcome goes."""

    room_id: str
    at: int
    reply_to: str
    sid: str = ""
    """The asking session's sid; empty for the server API, whose events name nobody."""
    req: int = 0
    """The request's id on the session's socket (0 for the server API)."""

    def room(self) -> dict[str, Any]:
        """The fields every event carries."""
        return {"room_id": self.room_id, "at": self.at, "reply_to": self.reply_to}

    def session(self) -> dict[str, Any]:
        """The fields of an event a session asked for."""
        return {**self.room(), "sid": self.sid, "req": self.req}


def new_track_sid() -> str:
    """A track sid, ``TR_`` + 12 random url-safe characters."""
    return "TR_" + secrets.token_urlsafe(9)


def new_room_sid() -> str:
    """A room sid, ``RM_`` + 12 random url-safe characters."""
    return "RM_" + secrets.token_urlsafe(9)


def new_dispatch_id() -> str:
    """An agent job id, ``AJ_`` + 12 random url-safe characters."""
    return "AJ_" + secrets.token_urlsafe(9)


def _publish(m: PublishTrack, o: Origin) -> LogEvent:
    track = TrackInfo(sid=new_track_sid(), kind=m.kind, source=m.source, name=m.name)
    return TrackPublishRequested(**o.session(), track=track)


def _subscription(m: Subscribe | Unsubscribe, o: Origin) -> LogEvent:
    return SubscriptionRequested(
        **o.session(),
        participant_id=m.participant_id,
        kind=m.kind,
        subscribed=isinstance(m, Subscribe),
    )


def _create_room(m: CreateRoomRequest, o: Origin) -> LogEvent:
    agents = tuple(AgentJobSpec(dispatch_id=new_dispatch_id(), agent_name=a) for a in m.agents)
    return RoomCreateRequested(
        **o.room(),
        v=2 if agents else 1,  # version 1 readers would drop the agents: let them refuse
        agents=agents,
        room_sid=new_room_sid(),
        max_participants=m.max_participants,
        empty_timeout=m.empty_timeout,
        departure_timeout=m.departure_timeout,
        metadata=m.metadata,
        livestream=m.livestream,
    )


def _update_participant(m: UpdateParticipantRequest, o: Origin) -> LogEvent:
    return ParticipantUpdateRequested(
        **o.room(),
        participant_id=m.participant_id,
        is_viewer=m.is_viewer,
        grant=m.grant,
        metadata=m.metadata,
        attributes=m.attributes,
        name=m.name,
    )


EVENTS: dict[type[Message], Callable[[Any, Origin], LogEvent]] = {
    # A session's actions (docs/protocol.md, "Requests").
    Leave: lambda m, o: LeaveRequested(**o.session()),
    PublishTrack: _publish,
    UnpublishTrack: lambda m, o: TrackUnpublishRequested(**o.session(), track_sid=m.track_sid),
    MuteTrack: lambda m, o: TrackMuteRequested(**o.session(), track_sid=m.track_sid, muted=m.muted),
    SetMetadata: lambda m, o: MetadataSet(**o.session(), metadata=m.metadata),
    SetAttributes: lambda m, o: AttributesSet(**o.session(), attributes=m.attributes),
    RaiseHand: lambda m, o: AttributesSet(**o.session(), attributes={HAND_ATTRIBUTE: HAND_RAISED}),
    LowerHand: lambda m, o: AttributesSet(**o.session(), attributes={HAND_ATTRIBUTE: ""}),
    Subscribe: _subscription,
    Unsubscribe: _subscription,
    # The server API's writes (docs/api.md, RoomService).
    CreateRoomRequest: _create_room,
    DeleteRoomRequest: lambda m, o: RoomDeleteRequested(**o.room()),
    UpdateRoomMetadataRequest: lambda m, o: RoomMetadataSet(**o.room(), metadata=m.metadata),
    UpdateParticipantRequest: _update_participant,
    RemoveParticipantRequest: lambda m, o: ParticipantRemoveRequested(
        **o.room(), participant_id=m.participant_id
    ),
    MuteTrackRequest: lambda m, o: TrackMuteForced(
        **o.room(), participant_id=m.participant_id, track_sid=m.track_sid, muted=m.muted
    ),
    DispatchAgentRequest: lambda m, o: DispatchCreated(
        **o.room(), dispatch_id=new_dispatch_id(), agent_name=m.agent_name, metadata=m.metadata
    ),
    DeleteDispatchRequest: lambda m, o: DispatchDeleted(**o.room(), dispatch_id=m.dispatch_id),
}
"""The one request -> room-log event table."""


def to_event(message: Message, origin: Origin) -> LogEvent | None:
    """The room-log event `message` becomes, asked from `origin`; None for a request that
    is not an action (a read, a ping, data, signaling)."""
    make = EVENTS.get(type(message))
    return None if make is None else make(message, origin)


__all__ = ["EVENTS", "Origin", "new_dispatch_id", "new_room_sid", "new_track_sid", "to_event"]
