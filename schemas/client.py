"""Frames between a client and an edge over the signaling WebSocket.

Requests carry a client-chosen `id`; the edge answers each with an `Ack`, a typed reply
(`JoinAccepted`, `ParticipantsPage`, `SignalAnswer`, `Pong`) or an `Error` naming the same
`id`. Broadcast frames (participant and track events, counts) carry the room-log sequence
they derive from, so a client can drop one it has already applied.
"""

from __future__ import annotations

from typing import Annotated, Literal

from schemas.codec import MaxBytes, MaxItems, MaxLen, Message, message
from schemas.models import (
    Attributes,
    Counts,
    DataPayload,
    Grant,
    Identity,
    IdList,
    Metadata,
    Name,
    ParticipantInfo,
    RoomInfo,
    Tier,
    TrackInfo,
    TrackKind,
    TrackSource,
)

Token = Annotated[str, MaxLen(8192)]
Sdp = Annotated[str, MaxBytes(128 * 1024)]
Cursor = Annotated[str, MaxLen(1024)]
MediaTarget = Literal["publisher", "subscriber"]

# --------------------------------------------------------------------------- client -> edge


@message("join")
class Join(Message):
    """First frame of a session: the token, the room (for roomless tokens) and a name."""

    id: int
    token: Token
    room_id: Identity | None = None
    name: Name | None = None
    resume: Token | None = None
    auto_subscribe: bool = True
    sdk: Identity = ""
    join_key: Identity = ""
    """Optional, chosen by the client once per connect and sent on every retry of it: the
    edge derives the session's sid from it and the token, so a retry after a timed-out join
    (on any edge) continues the same session instead of joining twice."""


@message("leave")
class Leave(Message):
    """Leave the room now (no departure grace)."""

    id: int


@message("publish_track")
class PublishTrack(Message):
    """Announce a track about to be published; the reply `Ack` carries its sid."""

    id: int
    kind: TrackKind
    source: TrackSource = "unknown"
    name: Name = ""


@message("unpublish_track")
class UnpublishTrack(Message):
    id: int
    track_sid: Identity


@message("mute_track")
class MuteTrack(Message):
    id: int
    track_sid: Identity
    muted: bool


@message("set_metadata")
class SetMetadata(Message):
    id: int
    metadata: Metadata


@message("set_attributes")
class SetAttributes(Message):
    """Merge attributes into the participant's; an empty value deletes its key."""

    id: int
    attributes: Attributes


@message("publish_data")
class PublishData(Message):
    """Send data to the room, or to `destination_ids` only. The edge stamps the sender."""

    id: int
    payload: DataPayload
    reliable: bool = True
    topic: Identity | None = None
    destination_ids: IdList = ()


@message("subscribe")
class Subscribe(Message):
    id: int
    participant_id: Identity
    kind: TrackKind


@message("unsubscribe")
class Unsubscribe(Message):
    id: int
    participant_id: Identity
    kind: TrackKind


@message("get_participants")
class GetParticipants(Message):
    id: int
    tier: Tier | None = None
    limit: int = 50
    cursor: Cursor | None = None


@message("raise_hand")
class RaiseHand(Message):
    id: int


@message("lower_hand")
class LowerHand(Message):
    id: int


@message("offer")
class SignalOffer(Message):
    """An SDP offer. Client -> edge (target ``publisher``): the offer of the peer connection
    that sends the announced track `track_sid`; the reply is an `answer`. Edge -> client
    (target ``subscriber``, id 0): the forwarder offers a peer connection carrying
    `participant_id`'s `kind` track `track_sid`; the client replies with an `answer`.
    A new offer for a `track_sid` replaces that track's peer connection."""

    id: int
    target: MediaTarget
    sdp: Sdp
    ice_restart: bool = False
    track_sid: Identity | None = None
    participant_id: Identity | None = None
    kind: TrackKind | None = None


@message("answer")
class SignalAnswer(Message):
    id: int
    target: MediaTarget
    sdp: Sdp
    track_sid: Identity | None = None


@message("candidate")
class SignalCandidate(Message):
    id: int
    target: MediaTarget
    candidate: Annotated[str, MaxLen(2048)]
    sdp_mid: Identity | None = None
    sdp_mline_index: int | None = None
    track_sid: Identity | None = None


@message("restart_ice")
class RestartIce(Message):
    """Ask for a fresh subscriber peer connection for `track_sid` (the network changed):
    the forwarder sends a new `offer`. A publisher restarts by sending a new `offer` with
    `ice_restart` set."""

    id: int
    track_sid: Identity


@message("ping")
class Ping(Message):
    id: int
    at: int = 0


# --------------------------------------------------------------------------- edge -> client


@message("ack")
class Ack(Message):
    """A request succeeded. `sid` names what it created (a track sid), when it did."""

    id: int
    sid: Identity | None = None


@message("error")
class Error(Message):
    """A request failed, or (with `id` None) the session hit a problem."""

    id: int | None = None
    code: Identity
    message: Annotated[str, MaxLen(4096)] = ""


@message("joined")
class JoinAccepted(Message):
    """The session is in the room: its initial snapshot and a resume token."""

    id: int
    seq: int
    room: RoomInfo
    participant: ParticipantInfo
    grant: Grant
    speakers: Annotated[tuple[ParticipantInfo, ...], MaxItems(10_000)] = ()
    counts: Counts = Counts()
    resume_token: Token = ""
    resumed: bool = False
    epoch: int = 0
    """The session's connection epoch (the edge puts it in the resume token)."""


@message("participant_joined")
class ParticipantJoined(Message):
    """A speaker joined (or became visible, or was promoted)."""

    seq: int
    participant: ParticipantInfo


@message("participant_left")
class ParticipantLeft(Message):
    """A speaker left (or was demoted to the audience)."""

    seq: int
    sid: Identity
    participant_id: Identity
    reason: Name = ""


@message("participant_updated")
class ParticipantUpdated(Message):
    """A speaker's name, metadata or attributes changed."""

    seq: int
    participant: ParticipantInfo


@message("track_published")
class TrackPublished(Message):
    seq: int
    participant_id: Identity
    track: TrackInfo


@message("track_unpublished")
class TrackUnpublished(Message):
    seq: int
    participant_id: Identity
    track_sid: Identity
    kind: TrackKind


@message("track_muted")
class TrackMuted(Message):
    seq: int
    participant_id: Identity
    track_sid: Identity
    muted: bool


@message("counts")
class CountsChanged(Message):
    """The room's coalesced counts (at most one per room per 250 ms window)."""

    seq: int
    counts: Counts


@message("room_updated")
class RoomUpdated(Message):
    seq: int
    room: RoomInfo


@message("hand")
class HandChanged(Message):
    """Moderators only: a participant of either tier raised or lowered a hand."""

    seq: int
    participant: ParticipantInfo
    raised: bool


@message("viewer_updated")
class ViewerUpdated(Message):
    """Moderators only: a viewer's metadata or attributes changed."""

    seq: int
    participant: ParticipantInfo


@message("data")
class DataReceived(Message):
    payload: DataPayload
    sender_id: Identity | None = None
    sender_sid: Identity | None = None
    topic: Identity | None = None
    reliable: bool = True
    destination_ids: IdList = ()


@message("tier_changed")
class TierChanged(Message):
    """The local participant was promoted or demoted: its new tier, grant and session token."""

    seq: int
    participant: ParticipantInfo
    grant: Grant
    resume_token: Token = ""


@message("participants_page")
class ParticipantsPage(Message):
    """One page of `get_participants`: speakers first, then viewers."""

    id: int
    participants: Annotated[tuple[ParticipantInfo, ...], MaxItems(1000)] = ()
    next_cursor: Cursor | None = None
    total: int = 0


@message("disconnect")
class Disconnect(Message):
    """The server ends the session; `reason` is a code such as `DUPLICATE_IDENTITY`."""

    reason: Name
    message: Annotated[str, MaxLen(4096)] = ""
    can_reconnect: bool = False


@message("pong")
class Pong(Message):
    id: int
    at: int = 0
    server_at: int = 0


REQUESTS: tuple[type[Message], ...] = (
    Join,
    Leave,
    PublishTrack,
    UnpublishTrack,
    MuteTrack,
    SetMetadata,
    SetAttributes,
    PublishData,
    Subscribe,
    Unsubscribe,
    GetParticipants,
    RaiseHand,
    LowerHand,
    SignalOffer,
    SignalAnswer,
    SignalCandidate,
    RestartIce,
    Ping,
)
"""Every frame a client may send."""
