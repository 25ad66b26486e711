"""Server API requests and replies (HTTP on the edge) and internal NATS RPC.

`RoomService` POSTs one of the `*Request` messages, msgpack-encoded, to `/api/<tag>` on an
edge, signed with an admin token. Reads are answered by the statekeeper over NATS
request/reply (`stagecast.sk.api`); writes become room-log events whose outcome the
statekeeper replies to the caller's inbox.
"""

from __future__ import annotations

from typing import Annotated

from schemas.client import Cursor
from schemas.codec import MaxItems, Message, message
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


@message("api.create_room")
class CreateRoomRequest(Message):
    room_id: Identity
    max_participants: int = 0
    empty_timeout: int = 300
    departure_timeout: int = 20
    metadata: Metadata = ""
    livestream: bool = False


@message("api.list_rooms")
class ListRoomsRequest(Message):
    room_ids: IdList | None = None


@message("api.delete_room")
class DeleteRoomRequest(Message):
    room_id: Identity


@message("api.list_participants")
class ListParticipantsRequest(Message):
    """Also the statekeeper's RPC behind a client's `get_participants`."""

    room_id: Identity
    tier: Tier | None = None
    limit: int = 50
    cursor: Cursor | None = None


@message("api.get_participant")
class GetParticipantRequest(Message):
    room_id: Identity
    participant_id: Identity


@message("api.update_participant")
class UpdateParticipantRequest(Message):
    room_id: Identity
    participant_id: Identity
    is_viewer: bool | None = None
    grant: Grant | None = None
    metadata: Metadata | None = None
    attributes: Attributes | None = None
    name: Name | None = None


@message("api.remove_participant")
class RemoveParticipantRequest(Message):
    room_id: Identity
    participant_id: Identity


@message("api.mute_track")
class MuteTrackRequest(Message):
    room_id: Identity
    participant_id: Identity
    track_sid: Identity
    muted: bool = True


@message("api.update_room_metadata")
class UpdateRoomMetadataRequest(Message):
    room_id: Identity
    metadata: Metadata


@message("api.send_data")
class SendDataRequest(Message):
    room_id: Identity
    payload: DataPayload
    topic: Identity | None = None
    destination_ids: IdList = ()
    reliable: bool = True


@message("api.room")
class RoomReply(Message):
    room: RoomInfo


@message("api.rooms")
class RoomListReply(Message):
    rooms: Annotated[tuple[RoomInfo, ...], MaxItems(10_000)] = ()


@message("api.participant")
class ParticipantReply(Message):
    participant: ParticipantInfo


@message("api.ok")
class OkReply(Message):
    """A write succeeded and has nothing more to say."""


# --------------------------------------------------------------------------- internal


@message("internal.edge_heartbeat")
class EdgeHeartbeat(Message):
    """Every edge publishes one each second on `stagecast.edges.heartbeat`."""

    edge_id: Identity
    at: int
    sockets: int = 0
    interval_ms: int = 1000


@message("internal.edge_gone")
class EdgeGone(Message):
    """An edge shutting down cleanly says so, so its sessions' grace starts at once."""

    edge_id: Identity
    at: int


@message("internal.media_assign")
class MediaAssignRequest(Message):
    """Edge -> statekeeper (`stagecast.sk.api`): which forwarder carries this session's
    media? Assigns one (and logs it) on first use; `track_sid`, when given, must be a
    track the session has announced."""

    room_id: Identity
    sid: Identity
    track_sid: Identity | None = None


@message("internal.media_assignment")
class MediaAssignment(Message):
    forwarder_id: Identity
    kind: TrackKind | None = None
    """The announced kind of the request's `track_sid`."""


@message("internal.health")
class HealthRequest(Message):
    pass


@message("internal.health_reply")
class HealthReply(Message):
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
