"""Public, durable events for integrations (webhooks, agents, analytics).

They are published on the `STAGECAST_EVENTS` stream, subject
`stagecast.events.<room>.<event>`, and are a stable interface: fields may be added, never
renamed or removed. `id` is unique per event and stable across statekeeper restarts.
"""

from __future__ import annotations

from schemas.codec import Message
from schemas.models import Identity, Name, ParticipantInfo, RoomInfo, TrackInfo


class RoomStarted(Message, tag="event.room_started", frozen=True, kw_only=True):
    id: Identity
    at: int
    room: RoomInfo


class RoomFinished(Message, tag="event.room_finished", frozen=True, kw_only=True):
    id: Identity
    at: int
    room: RoomInfo
    reason: Name = ""


class ParticipantJoinedEvent(Message, tag="event.participant_joined", frozen=True, kw_only=True):
    id: Identity
    at: int
    room_id: Identity
    room_sid: Identity
    participant: ParticipantInfo


class ParticipantLeftEvent(Message, tag="event.participant_left", frozen=True, kw_only=True):
    id: Identity
    at: int
    room_id: Identity
    room_sid: Identity
    participant: ParticipantInfo
    reason: Name = ""


class TrackPublishedEvent(Message, tag="event.track_published", frozen=True, kw_only=True):
    id: Identity
    at: int
    room_id: Identity
    room_sid: Identity
    participant: ParticipantInfo
    track: TrackInfo


class TrackUnpublishedEvent(Message, tag="event.track_unpublished", frozen=True, kw_only=True):
    id: Identity
    at: int
    room_id: Identity
    room_sid: Identity
    participant: ParticipantInfo
    track: TrackInfo


PUBLIC_EVENTS = (
    RoomStarted,
    RoomFinished,
    ParticipantJoinedEvent,
    ParticipantLeftEvent,
    TrackPublishedEvent,
    TrackUnpublishedEvent,
)
