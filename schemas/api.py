"""Server API requests and replies (HTTP on the edge) and internal NATS RPC.

`RoomService` POSTs one of the `*Request` messages, msgpack-encoded, to `/api/<tag>` on an
edge, signed with an admin token. Reads are answered by the statekeeper over NATS
request/reply (`stagecast.sk.api`); writes become room-log events whose outcome the
statekeeper replies to the caller's inbox.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from schemas.client import Cursor
from schemas.codec import Message
from schemas.models import (
    Attributes,
    DataPayload,
    Grant,
    Identity,
    IdList,
    Metadata,
    Name,
    ParticipantInfo,
    RoomInfo,
    Tier,
    TrackKind,
)


class CreateRoomRequest(Message, tag="api.create_room", frozen=True, kw_only=True):
    room_id: Identity
    max_participants: int = 0
    empty_timeout: int = 300
    departure_timeout: int = 20
    metadata: Metadata = ""
    livestream: bool = False
    agents: Annotated[tuple[Identity, ...], Meta(max_length=16)] = ()
    """Agent names to dispatch once the room exists (one job each, see `schemas.agents`)."""


class ListRoomsRequest(Message, tag="api.list_rooms", frozen=True, kw_only=True):
    room_ids: IdList | None = None


class DeleteRoomRequest(Message, tag="api.delete_room", frozen=True, kw_only=True):
    room_id: Identity


class ListParticipantsRequest(Message, tag="api.list_participants", frozen=True, kw_only=True):
    """Also the statekeeper's RPC behind a client's `get_participants`."""

    room_id: Identity
    tier: Tier | None = None
    limit: int = 50
    cursor: Cursor | None = None


class GetParticipantRequest(Message, tag="api.get_participant", frozen=True, kw_only=True):
    room_id: Identity
    participant_id: Identity


class UpdateParticipantRequest(Message, tag="api.update_participant", frozen=True, kw_only=True):
    room_id: Identity
    participant_id: Identity
    is_viewer: bool | None = None
    grant: Grant | None = None
    metadata: Metadata | None = None
    attributes: Attributes | None = None
    name: Name | None = None


class RemoveParticipantRequest(Message, tag="api.remove_participant", frozen=True, kw_only=True):
    room_id: Identity
    participant_id: Identity


class MuteTrackRequest(Message, tag="api.mute_track", frozen=True, kw_only=True):
    room_id: Identity
    participant_id: Identity
    track_sid: Identity
    muted: bool = True


class UpdateRoomMetadataRequest(Message, tag="api.update_room_metadata", frozen=True, kw_only=True):
    room_id: Identity
    metadata: Metadata


class SendDataRequest(Message, tag="api.send_data", frozen=True, kw_only=True):
    room_id: Identity
    payload: DataPayload
    topic: Identity | None = None
    destination_ids: IdList = ()
    reliable: bool = True


class RoomReply(Message, tag="api.room", frozen=True, kw_only=True):
    room: RoomInfo


class RoomListReply(Message, tag="api.rooms", frozen=True, kw_only=True):
    rooms: Annotated[tuple[RoomInfo, ...], Meta(max_length=10_000)] = ()


class ParticipantReply(Message, tag="api.participant", frozen=True, kw_only=True):
    participant: ParticipantInfo


class OkReply(Message, tag="api.ok", frozen=True, kw_only=True):
    """A write succeeded and has nothing more to say."""


# --------------------------------------------------------------------------- internal

OUTCOME_FRAME_BYTES = 64 * 1024
"""The largest reply frame an `ActionOutcome` carries (an `error` message is 4,096 characters)."""


class EdgeHeartbeat(Message, tag="internal.edge_heartbeat", frozen=True, kw_only=True):
    """Every edge publishes one each second on `stagecast.edges.heartbeat`."""

    edge_id: Identity
    at: int
    sockets: int = 0
    interval_ms: int = 1000


class EdgeGone(Message, tag="internal.edge_gone", frozen=True, kw_only=True):
    """An edge shutting down cleanly says so, so its sessions' grace starts at once."""

    edge_id: Identity
    at: int


class MediaAssignRequest(Message, tag="internal.media_assign", frozen=True, kw_only=True):
    """Edge -> statekeeper (`stagecast.sk.api`): which forwarder carries this session's
    media? Assigns one (and logs it) on first use; `track_sid`, when given, must be a
    track the session has announced."""

    room_id: Identity
    sid: Identity
    track_sid: Identity | None = None


class MediaAssignment(Message, tag="internal.media_assignment", frozen=True, kw_only=True):
    forwarder_id: Identity
    kind: TrackKind | None = None
    """The announced kind of the request's `track_sid`."""


class ActionOutcomeRequest(Message, tag="internal.action_outcome", frozen=True, kw_only=True):
    """Edge -> statekeeper (`stagecast.sk.api`): the reply the fold sent to `reply_to` for
    the action stored at log sequence `seq`. An edge asks when that reply did not come (it
    was published while a NATS link was down: core NATS keeps nothing)."""

    room_id: Identity
    seq: Annotated[int, Meta(ge=1)]
    reply_to: Annotated[str, Meta(max_length=1024)]


class ActionOutcome(Message, tag="internal.action_outcome_reply", frozen=True, kw_only=True):
    """The answer to `ActionOutcomeRequest`: `frame` is the `ack` or `error` frame the fold
    sent, byte for byte; None with `folded` False while the statekeeper has not folded `seq`
    yet (ask again), None with `folded` True when it keeps no reply for it (too old, or
    folded by an earlier statekeeper process)."""

    folded: bool
    frame: Annotated[bytes, Meta(max_length=OUTCOME_FRAME_BYTES)] | None = None


class HealthRequest(Message, tag="internal.health", frozen=True, kw_only=True):
    pass


class HealthReply(Message, tag="internal.health_reply", frozen=True, kw_only=True):
    service: Identity
    ok: bool
    applied_seq: int = 0
    rooms: int = 0
    persistence_state: int = 0
    """The statekeeper's persistence: 0 writing, 1 failing and retrying."""
    persist_failures: int = 0
    """Failed persistence attempts since start (outages and refused batches)."""
    poisoned_events: int = 0
    """Items a store or the events stream refused, set aside since start."""
    nats_disconnects: int = 0
    """Times the statekeeper's NATS link was lost since start."""
    nats_reconnect_failures: int = 0
    """Reconnect attempts that failed since start."""
    liveness_skipped: int = 0
    """Edge and forwarder liveness checks skipped because its own link was down or new."""
    forwarders: int = 0
    """Live media forwarders the statekeeper can place media on (0: publishing fails)."""
