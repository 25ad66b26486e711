"""Events of the room log (JetStream), the only input of the statekeeper's fold.

Edges append client actions, the server API appends admin actions, and the statekeeper
appends timer events. Every event names its room, carries the time it was stamped (`at`,
milliseconds since the epoch) and every id the fold will need, so the fold never reads a
clock or makes an id. `reply_to` / `req` say where the fold's answer goes (a session's
direct subject or an API caller's inbox) and which request it answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

import msgspec
from msgspec import Meta

from schemas.codec import Message, Struct
from schemas.models import (
    Attributes,
    Grant,
    Identity,
    IdList,
    Metadata,
    Name,
    ParticipantKind,
    TrackInfo,
    TrackKind,
)

Subject = Annotated[str, Meta(max_length=1024)]


ACTION_DEADLINE_MS = 3_000
"""An action (an event with `reply_to`) stored in the room log more than this long after its
`at` is refused by the fold (`UNAVAILABLE`), never applied. An edge waits at least this long
for JetStream to confirm an append before it reports the action failed, so an action the
client was told failed can never take effect later (after a NATS reconnect, say)."""


class LogEvent(Message, frozen=True, kw_only=True):
    """Base of room-log events (every subclass has `room_id`, `at`, `reply_to`, `req`).

    Each subclass declares those fields itself, where its wire order wants them; here they
    are declared for the type checker only.
    """

    ABSTRACT: ClassVar[bool] = True
    if TYPE_CHECKING:
        room_id: str
        at: int
        reply_to: str | None
        req: int


# --------------------------------------------------------------------------- session actions


class JoinRequested(LogEvent, tag="log.join", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    sid: Identity
    participant_id: Identity
    name: Name = ""
    is_viewer: bool = False
    kind: ParticipantKind = "standard"
    grant: Grant = Grant()
    metadata: Metadata = ""
    attributes: Attributes = msgspec.field(default_factory=dict)
    edge_id: Identity
    token_id: Identity = ""
    token_expires_at: int = 0
    """When the session's token expires, in milliseconds since the epoch (0: unknown)."""
    reply_to: Subject | None = None
    req: int = 0


class ResumeRequested(LogEvent, tag="log.resume", frozen=True, kw_only=True):
    """A client reconnected (to any edge) within its departure grace."""

    room_id: Identity
    at: int
    sid: Identity
    edge_id: Identity
    reply_to: Subject | None = None
    req: int = 0
    epoch: int = 0
    """The connection epoch the resume token names (the fold refuses any but the current)."""
    room_sid: Identity = ""
    """The room sid the resume token names ("" for none)."""


class LeaveRequested(LogEvent, tag="log.leave", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    sid: Identity
    reply_to: Subject | None = None
    req: int = 0


class SessionDisconnected(LogEvent, tag="log.disconnect", frozen=True, kw_only=True):
    """The session's socket dropped: the departure grace starts."""

    room_id: Identity
    at: int
    sid: Identity
    edge_id: Identity
    reply_to: Subject | None = None
    req: int = 0


class TrackPublishRequested(LogEvent, tag="log.publish_track", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    sid: Identity
    track: TrackInfo
    reply_to: Subject | None = None
    req: int = 0


class TrackUnpublishRequested(LogEvent, tag="log.unpublish_track", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    sid: Identity
    track_sid: Identity
    reply_to: Subject | None = None
    req: int = 0


class TrackMuteRequested(LogEvent, tag="log.mute_track", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    sid: Identity
    track_sid: Identity
    muted: bool
    reply_to: Subject | None = None
    req: int = 0


class MetadataSet(LogEvent, tag="log.set_metadata", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    sid: Identity
    metadata: Metadata
    reply_to: Subject | None = None
    req: int = 0


class AttributesSet(LogEvent, tag="log.set_attributes", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    sid: Identity
    attributes: Attributes
    reply_to: Subject | None = None
    req: int = 0


class SubscriptionRequested(LogEvent, tag="log.subscription", frozen=True, kw_only=True):
    """A subscriber's intent to receive (or stop receiving) a speaker's track kind."""

    room_id: Identity
    at: int
    sid: Identity
    participant_id: Identity
    kind: TrackKind
    subscribed: bool
    reply_to: Subject | None = None
    req: int = 0


# --------------------------------------------------------------------------- admin actions


class AgentJobSpec(Struct, frozen=True, kw_only=True):
    """One agent job a new room starts with: its id (made by the edge) and agent name."""

    dispatch_id: Identity
    agent_name: Identity


class RoomCreateRequested(LogEvent, tag="log.create_room", frozen=True, kw_only=True):
    """Open a room (or answer the existing one); `agents`: jobs added to it either way.

    Version 2 carries `agents`; the edge writes version 1 when there are none, so that a
    statekeeper that only reads version 1 refuses (rather than half applies) an event
    whose agents it would drop."""

    VERSION: ClassVar[int] = 2
    v: Annotated[int, Meta(ge=1, le=2)] = msgspec.field(default_factory=(1).__int__)
    room_id: Identity
    at: int
    room_sid: Identity
    max_participants: int = 0
    empty_timeout: int = 300
    departure_timeout: int = 20
    metadata: Metadata = ""
    livestream: bool = False
    reply_to: Subject | None = None
    req: int = 0
    agents: Annotated[tuple[AgentJobSpec, ...], Meta(max_length=16)] = ()


class RoomDeleteRequested(LogEvent, tag="log.delete_room", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    reply_to: Subject | None = None
    req: int = 0


class RoomMetadataSet(LogEvent, tag="log.update_room_metadata", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    metadata: Metadata
    reply_to: Subject | None = None
    req: int = 0


class ParticipantUpdateRequested(LogEvent, tag="log.update_participant", frozen=True, kw_only=True):
    """Server-side change of a participant: tier (promotion/demotion), grant, name, data."""

    room_id: Identity
    at: int
    participant_id: Identity
    is_viewer: bool | None = None
    grant: Grant | None = None
    metadata: Metadata | None = None
    attributes: Attributes | None = None
    name: Name | None = None
    reply_to: Subject | None = None
    req: int = 0


class ParticipantRemoveRequested(LogEvent, tag="log.remove_participant", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    participant_id: Identity
    reply_to: Subject | None = None
    req: int = 0


class TrackMuteForced(LogEvent, tag="log.admin_mute", frozen=True, kw_only=True):
    room_id: Identity
    at: int
    participant_id: Identity
    track_sid: Identity
    muted: bool
    reply_to: Subject | None = None
    req: int = 0


# --------------------------------------------------------------------------- timer events


class GraceExpired(LogEvent, tag="log.grace_expired", frozen=True, kw_only=True):
    """The departure grace of a disconnected session ran out (written by the statekeeper)."""

    room_id: Identity
    at: int
    sid: Identity
    disconnected_at: int
    reply_to: Subject | None = None
    req: int = 0


class RoomTimedOut(LogEvent, tag="log.room_timeout", frozen=True, kw_only=True):
    """A room stayed empty past its empty/departure timeout (written by the statekeeper)."""

    room_id: Identity
    at: int
    room_sid: Identity
    empty_since: int
    reply_to: Subject | None = None
    req: int = 0


class ForwarderAssigned(LogEvent, tag="log.forwarder_assigned", frozen=True, kw_only=True):
    """The statekeeper put a session's media on a forwarder (least loaded, or a live one
    after the previous forwarder stopped beating)."""

    room_id: Identity
    at: int
    sid: Identity
    forwarder_id: Identity
    reply_to: Subject | None = None
    req: int = 0


class SessionsAlive(LogEvent, tag="log.sessions_alive", frozen=True, kw_only=True):
    """An edge's NATS link came back, and it still holds the sockets of these sessions of
    the room (at most 1,024 per event). Those an `EdgeLost` put in their grace meanwhile (the
    edge was cut off, not gone) are taken back out of it; any the room no longer has is
    told its session is lost (`SESSION_LOST`), so its client joins again."""

    room_id: Identity
    at: int
    edge_id: Identity
    sids: IdList = ()
    reply_to: Subject | None = None
    req: int = 0


class EdgeLost(LogEvent, tag="log.edge_lost", frozen=True, kw_only=True):
    """An edge stopped heart-beating: its sessions in this room enter the grace."""

    room_id: Identity
    at: int
    edge_id: Identity
    reply_to: Subject | None = None
    req: int = 0


# --------------------------------------------------------------------------- agent dispatch


class DispatchCreated(LogEvent, tag="log.create_dispatch", frozen=True, kw_only=True):
    """The server API asked for agent `agent_name` in the room (job id made by the edge)."""

    room_id: Identity
    at: int
    dispatch_id: Identity
    agent_name: Identity
    metadata: Metadata = ""
    reply_to: Subject | None = None
    req: int = 0


class DispatchDeleted(LogEvent, tag="log.delete_dispatch", frozen=True, kw_only=True):
    """The server API took a job back: it is forgotten, and its agent removed from the room."""

    room_id: Identity
    at: int
    dispatch_id: Identity
    reply_to: Subject | None = None
    req: int = 0


class DispatchStarted(LogEvent, tag="log.dispatch_started", frozen=True, kw_only=True):
    """A worker took a pending job (written by the dispatcher of the room's partition).

    `attempt` is the job's attempt while it was pending: an event for another attempt (a
    stale offer's) changes nothing."""

    room_id: Identity
    at: int
    dispatch_id: Identity
    worker_id: Identity
    attempt: int
    reply_to: Subject | None = None
    req: int = 0


class DispatchEnded(LogEvent, tag="log.dispatch_ended", frozen=True, kw_only=True):
    """A running job is over on `worker_id` (written by the dispatcher of the room's
    partition): the worker said so (`reason` its own: `completed`, `failed: ...`), or it
    is gone (`worker_lost`: the job is pending again, for another worker)."""

    room_id: Identity
    at: int
    dispatch_id: Identity
    worker_id: Identity
    reason: Name = ""
    reply_to: Subject | None = None
    req: int = 0
