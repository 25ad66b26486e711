"""The webhook body: a public event as JSON, in LiveKit's ``WebhookEvent`` shape.

`webhook_event(event)` turns a public event (`schemas.events`) into a `WebhookEvent`;
`encode_webhook` / `decode_webhook` are its JSON form (camelCase keys, as LiveKit's
``protojson`` writes them). Fields may be added, never renamed or removed.
"""

from __future__ import annotations

import msgspec

from schemas.agents import AgentDispatch, AgentJobEndedEvent, AgentJobStartedEvent
from schemas.events import (
    ParticipantJoinedEvent,
    ParticipantLeftEvent,
    RoomFinished,
    RoomStarted,
    TrackPublishedEvent,
    TrackUnpublishedEvent,
)
from schemas.models import ParticipantInfo, RoomInfo, TrackInfo

__all__ = [
    "EVENT_NAMES",
    "PublicEventMessage",
    "WebhookAgentDispatch",
    "WebhookEvent",
    "WebhookParticipant",
    "WebhookRoom",
    "WebhookTrack",
    "decode_webhook",
    "encode_webhook",
    "event_name",
    "webhook_event",
]

PublicEventMessage = (
    RoomStarted
    | RoomFinished
    | ParticipantJoinedEvent
    | ParticipantLeftEvent
    | TrackPublishedEvent
    | TrackUnpublishedEvent
    | AgentJobStartedEvent
    | AgentJobEndedEvent
)
_NAMES: dict[type[PublicEventMessage], str] = {
    RoomStarted: "room_started",
    RoomFinished: "room_finished",
    ParticipantJoinedEvent: "participant_joined",
    ParticipantLeftEvent: "participant_left",
    TrackPublishedEvent: "track_published",
    TrackUnpublishedEvent: "track_unpublished",
    AgentJobStartedEvent: "agent_job_started",
    AgentJobEndedEvent: "agent_job_ended",
}
EVENT_NAMES = frozenset(_NAMES.values())
"""Every webhook event name (the ``event`` field, and what endpoint filters name)."""


class WebhookRoom(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The room an event is about (``sid`` and ``name`` always; the rest on room events)."""

    sid: str
    name: str
    metadata: str = ""
    max_participants: int = 0
    empty_timeout: int = 0
    departure_timeout: int = 0
    creation_time: int = 0
    """Seconds since the epoch."""
    num_participants: int = 0


class WebhookTrack(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A track: ``type`` is ``AUDIO`` or ``VIDEO``, ``source`` e.g. ``CAMERA``."""

    sid: str
    type: str
    source: str = "UNKNOWN"
    name: str = ""
    muted: bool = False


class WebhookParticipant(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A participant: ``kind`` is ``STANDARD``, ``SIP`` or ``AGENT``; viewers have
    ``isViewer`` true; ``joinedAt`` is in seconds since the epoch."""

    sid: str
    identity: str
    name: str = ""
    kind: str = "STANDARD"
    is_viewer: bool = False
    metadata: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    joined_at: int = 0
    tracks: list[WebhookTrack] = msgspec.field(default_factory=list)


class WebhookAgentDispatch(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An agent job (``agent_job_started`` / ``agent_job_ended``): ``state`` is ``pending``,
    ``running`` or ``ended``; ``attempt`` counts the workers it was given to."""

    id: str
    agent_name: str
    metadata: str = ""
    state: str = "pending"
    worker_id: str = ""
    attempt: int = 0


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One webhook delivery's body. ``id`` is the public event's id (the idempotency key,
    also the ``webhook-id`` header); ``createdAt`` is in seconds since the epoch."""

    event: str
    id: str
    created_at: int
    room: WebhookRoom
    participant: WebhookParticipant | None = None
    track: WebhookTrack | None = None
    agent_dispatch: WebhookAgentDispatch | None = None
    reason: str = ""


def event_name(event: PublicEventMessage) -> str:
    """The webhook event name of a public event (``participant_joined``...)."""
    return _NAMES[type(event)]


def _room(info: RoomInfo) -> WebhookRoom:
    return WebhookRoom(
        sid=info.sid,
        name=info.id,
        metadata=info.metadata,
        max_participants=info.max_participants,
        empty_timeout=info.empty_timeout,
        departure_timeout=info.departure_timeout,
        creation_time=info.created_at // 1000,
        num_participants=info.counts.total,
    )


def _track(info: TrackInfo) -> WebhookTrack:
    return WebhookTrack(
        sid=info.sid,
        type=info.kind.upper(),
        source=info.source.upper(),
        name=info.name,
        muted=info.muted,
    )


def _participant(info: ParticipantInfo) -> WebhookParticipant:
    return WebhookParticipant(
        sid=info.sid,
        identity=info.id,
        name=info.name,
        kind=info.kind.upper(),
        is_viewer=info.is_viewer,
        metadata=info.metadata,
        attributes=dict(info.attributes),
        joined_at=info.joined_at // 1000,
        tracks=[_track(t) for t in info.tracks],
    )


def _dispatch(job: AgentDispatch) -> WebhookAgentDispatch:
    return WebhookAgentDispatch(
        id=job.id,
        agent_name=job.agent_name,
        metadata=job.metadata,
        state=job.state,
        worker_id=job.worker_id,
        attempt=job.attempt,
    )


def webhook_event(event: PublicEventMessage) -> WebhookEvent:
    """The webhook body of a public event (pure: no clock, the time is the event's)."""
    name = event_name(event)
    created = event.at // 1000
    if isinstance(event, RoomStarted | RoomFinished):
        reason = event.reason if isinstance(event, RoomFinished) else ""
        return WebhookEvent(
            event=name, id=event.id, created_at=created, room=_room(event.room), reason=reason
        )
    if isinstance(event, AgentJobStartedEvent | AgentJobEndedEvent):
        return WebhookEvent(
            event=name,
            id=event.id,
            created_at=created,
            room=WebhookRoom(sid="", name=event.room_id),
            agent_dispatch=_dispatch(event.dispatch),
            reason=event.reason if isinstance(event, AgentJobEndedEvent) else "",
        )
    room = WebhookRoom(sid=event.room_sid, name=event.room_id)
    participant = _participant(event.participant)
    if isinstance(event, TrackPublishedEvent | TrackUnpublishedEvent):
        return WebhookEvent(
            event=name,
            id=event.id,
            created_at=created,
            room=room,
            participant=participant,
            track=_track(event.track),
        )
    reason = event.reason if isinstance(event, ParticipantLeftEvent) else ""
    return WebhookEvent(
        event=name,
        id=event.id,
        created_at=created,
        room=room,
        participant=participant,
        reason=reason,
    )


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(WebhookEvent)


def encode_webhook(event: WebhookEvent) -> bytes:
    """The JSON body of a delivery."""
    return _ENCODER.encode(event)


def decode_webhook(body: bytes) -> WebhookEvent:
    """Parse a delivery's JSON body; `msgspec.ValidationError`/`DecodeError` if malformed."""
    return _DECODER.decode(body)
