"""Public, durable events for integrations (webhooks, agents, analytics).

They are published on the `STAGECAST_EVENTS` stream, subject
`stagecast.events.<room>.<event>`, and are a stable interface: fields may be added, never
renamed or removed. `id` is unique per event and stable across statekeeper restarts.
"""

from __future__ import annotations

from schemas.codec import Message, message
from schemas.models import Identity, Name, ParticipantInfo, RoomInfo, TrackInfo


@message("event.room_started")
class RoomStarted(Message):
    id: Identity
    at: int
    room: RoomInfo


@message("event.room_finished")
class RoomFinished(Message):
    id: Identity
    at: int
    room: RoomInfo
    reason: Name = ""


@message("event.participant_joined")
class ParticipantJoinedEvent(Message):
    id: Identity
    at: int
    room_id: Identity
    room_sid: Identity
    participant: ParticipantInfo


@message("event.participant_left")
class ParticipantLeftEvent(Message):
    id: Identity
    at: int
    room_id: Identity
    room_sid: Identity
    participant: ParticipantInfo
    reason: Name = ""


@message("event.track_published")
class TrackPublishedEvent(Message):
    id: Identity
    at: int
    room_id: Identity
    room_sid: Identity
    participant: ParticipantInfo
    track: TrackInfo


@message("event.track_unpublished")
class TrackUnpublishedEvent(Message):
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
