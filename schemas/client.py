"""Frames between a client and an edge over the signaling WebSocket.

Requests carry a client-chosen `id`; the edge answers each with an `Ack`, a typed reply
(`JoinAccepted`, `ParticipantsPage`, `SignalAnswer`, `Pong`) or an `Error` naming the same
`id`. Broadcast frames (participant and track events, counts) carry the room-log sequence
they derive from, so a client can drop one it has already applied.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from schemas.codec import MaxBytes, Message, Struct
from schemas.models import (
    MAX_ACTIVE_SPEAKERS,
    ActiveSpeaker,
    Attributes,
    CarriedPayload,
    Counts,
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

Token = Annotated[str, Meta(max_length=8192)]
Sdp = Annotated[str, Meta(max_length=128 * 1024), MaxBytes(128 * 1024)]
Cursor = Annotated[str, Meta(max_length=1024)]
MediaTarget = Literal["publisher", "subscriber"]

# --------------------------------------------------------------------------- client -> edge


class Join(Message, tag="join", frozen=True, kw_only=True):
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


class Leave(Message, tag="leave", frozen=True, kw_only=True):
    """Leave the room now (no departure grace)."""

    id: int


class PublishTrack(Message, tag="publish_track", frozen=True, kw_only=True):
    """Announce a track about to be published; the reply `Ack` carries its sid."""

    id: int
    kind: TrackKind
    source: TrackSource = "unknown"
    name: Name = ""


class UnpublishTrack(Message, tag="unpublish_track", frozen=True, kw_only=True):
    id: int
    track_sid: Identity


class MuteTrack(Message, tag="mute_track", frozen=True, kw_only=True):
    id: int
    track_sid: Identity
    muted: bool


class SetMetadata(Message, tag="set_metadata", frozen=True, kw_only=True):
    id: int
    metadata: Metadata


class SetAttributes(Message, tag="set_attributes", frozen=True, kw_only=True):
    """Merge attributes into the participant's; an empty value deletes its key."""

    id: int
    attributes: Attributes


class PublishData(Message, tag="publish_data", frozen=True, kw_only=True):
    """Send data to the room, or to `destination_ids` only. The edge stamps the sender."""

    id: int
    payload: CarriedPayload
    reliable: bool = True
    topic: Identity | None = None
    destination_ids: IdList = ()


class Subscribe(Message, tag="subscribe", frozen=True, kw_only=True):
    id: int
    participant_id: Identity
    kind: TrackKind


class Unsubscribe(Message, tag="unsubscribe", frozen=True, kw_only=True):
    id: int
    participant_id: Identity
    kind: TrackKind


class GetParticipants(Message, tag="get_participants", frozen=True, kw_only=True):
    id: int
    tier: Tier | None = None
    limit: int = 50
    cursor: Cursor | None = None


class RaiseHand(Message, tag="raise_hand", frozen=True, kw_only=True):
    id: int


class LowerHand(Message, tag="lower_hand", frozen=True, kw_only=True):
    id: int


SimulcastRid = Literal["q", "h", "f"]
"""A simulcast layer: quarter, half or full resolution."""


class PublishedLayer(Struct, frozen=True, kw_only=True):
    """One simulcast layer as the publisher sends it: the size it encodes (pixels) and
    its encoding's max bitrate (bits per second). The forwarder checks them (sides
    1..8192, bitrate 10 kbit/s..50 Mbit/s, q <= h <= f, each rid once) and chooses each
    subscriber's layer by them; a rid left out is taken as half the size of the one above
    (or twice the one below)."""

    rid: SimulcastRid
    width: int
    height: int
    max_bitrate: int


PublishedLayers = Annotated[tuple[PublishedLayer, ...], Meta(max_length=3)]


class SignalOffer(Message, tag="offer", frozen=True, kw_only=True):
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
    layers: PublishedLayers | None = None
    """A publisher's simulcast video offer: its layers (`PublishedLayer`). Left out, the
    forwarder keeps what it knew (nothing for a new track: it learns VP8 sizes from the
    keyframes, else assumes a 720p camera's layers); empty forgets an earlier list."""


class SignalAnswer(Message, tag="answer", frozen=True, kw_only=True):
    id: int
    target: MediaTarget
    sdp: Sdp
    track_sid: Identity | None = None


class SignalCandidate(Message, tag="candidate", frozen=True, kw_only=True):
    id: int
    target: MediaTarget
    candidate: Annotated[str, Meta(max_length=2048)]
    sdp_mid: Identity | None = None
    sdp_mline_index: int | None = None
    track_sid: Identity | None = None


class RestartIce(Message, tag="restart_ice", frozen=True, kw_only=True):
    """Ask for a fresh subscriber peer connection for `track_sid` (the network changed):
    the forwarder sends a new `offer`. A publisher restarts by sending a new `offer` with
    `ice_restart` set."""

    id: int
    track_sid: Identity


VideoQuality = Literal["low", "medium", "high"]
RenderedSize = Annotated[int, Meta(ge=0, le=16384)]


class SetVideoQuality(Message, tag="set_video_quality", frozen=True, kw_only=True):
    """How a subscriber wants the simulcast video track `track_sid`: at most `quality`,
    and no larger than the `width` x `height` it renders it at (adaptive stream). A field
    left out keeps its earlier value (none at first: no limit). Acked; kept by the
    forwarder for the session's leg of that track. A track sent in one layer ignores it."""

    id: int
    track_sid: Identity
    quality: VideoQuality | None = None
    width: RenderedSize | None = None
    height: RenderedSize | None = None


class LayersWanted(Message, tag="layers_wanted", frozen=True, kw_only=True):
    """Edge -> publisher client (dynacast): the simulcast layers of its track `track_sid`
    that some subscriber takes. The client keeps those encodings sending and turns the
    others off until a later `layers_wanted` names them again."""

    track_sid: Identity
    rids: Annotated[tuple[SimulcastRid, ...], Meta(max_length=3)] = ()


class VideoLayer(Message, tag="video_layer", frozen=True, kw_only=True):
    """Edge -> subscriber client: the simulcast layer of `track_sid` the forwarder now
    forwards to this session (`rid`: ``q``, ``h`` or ``f``). Sent by the forwarder when its
    leg switches layer, at the keyframe of the new layer it starts with, so it says what is
    sent, not what was asked for. None arrives for a track sent in one layer."""

    track_sid: Identity
    rid: SimulcastRid


class SetTrackLayers(Message, tag="set_track_layers", frozen=True, kw_only=True):
    """A publisher's simulcast layers of its video track `track_sid` changed (a camera
    switch, `applyConstraints`): the new list replaces the one its offer (or an earlier
    `set_track_layers`) gave. Acked once the forwarder took it; an empty list forgets it."""

    id: int
    track_sid: Identity
    layers: PublishedLayers = ()


class Ping(Message, tag="ping", frozen=True, kw_only=True):
    id: int
    at: int = 0


# --------------------------------------------------------------------------- edge -> client


class Ack(Message, tag="ack", frozen=True, kw_only=True):
    """A request succeeded. `sid` names what it created (a track sid), when it did."""

    id: int
    sid: Identity | None = None


class Error(Message, tag="error", frozen=True, kw_only=True):
    """A request failed, or (with `id` None) the session hit a problem."""

    id: int | None = None
    code: Identity
    message: Annotated[str, Meta(max_length=4096)] = ""
    retry_after_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 0
    """How long to wait before trying again (`SERVER_BUSY`); 0: no hint."""


class JoinAccepted(Message, tag="joined", frozen=True, kw_only=True):
    """The session is in the room: its initial snapshot and a resume token."""

    id: int
    seq: int
    room: RoomInfo
    participant: ParticipantInfo
    grant: Grant
    speakers: Annotated[tuple[ParticipantInfo, ...], Meta(max_length=10_000)] = ()
    counts: Counts = Counts()
    resume_token: Token = ""
    resumed: bool = False
    epoch: int = 0
    """The session's connection epoch (the edge puts it in the resume token)."""


class ParticipantJoined(Message, tag="participant_joined", frozen=True, kw_only=True):
    """A speaker joined (or became visible, or was promoted)."""

    seq: int
    participant: ParticipantInfo


class ParticipantLeft(Message, tag="participant_left", frozen=True, kw_only=True):
    """A speaker left (or was demoted to the audience)."""

    seq: int
    sid: Identity
    participant_id: Identity
    reason: Name = ""


class ParticipantUpdated(Message, tag="participant_updated", frozen=True, kw_only=True):
    """A speaker's name, metadata or attributes changed."""

    seq: int
    participant: ParticipantInfo


class TrackPublished(Message, tag="track_published", frozen=True, kw_only=True):
    seq: int
    participant_id: Identity
    track: TrackInfo


class TrackUnpublished(Message, tag="track_unpublished", frozen=True, kw_only=True):
    seq: int
    participant_id: Identity
    track_sid: Identity
    kind: TrackKind


class TrackMuted(Message, tag="track_muted", frozen=True, kw_only=True):
    seq: int
    participant_id: Identity
    track_sid: Identity
    muted: bool


class CountsChanged(Message, tag="counts", frozen=True, kw_only=True):
    """The room's coalesced counts (at most one per room per 250 ms window)."""

    seq: int
    counts: Counts


class ActiveSpeakersChanged(Message, tag="active_speakers", frozen=True, kw_only=True):
    """Who is talking now, loudest first (empty: nobody); at most four per second per room.

    It carries no `seq`: it comes from the media, not the room log, and the newest frame
    always replaces the one before.
    """

    speakers: Annotated[tuple[ActiveSpeaker, ...], Meta(max_length=MAX_ACTIVE_SPEAKERS)] = ()


class RoomUpdated(Message, tag="room_updated", frozen=True, kw_only=True):
    seq: int
    room: RoomInfo


class HandChanged(Message, tag="hand", frozen=True, kw_only=True):
    """Moderators only: a participant of either tier raised or lowered a hand."""

    seq: int
    participant: ParticipantInfo
    raised: bool


class AudienceChanged(Message, tag="audience_changed", frozen=True, kw_only=True):
    """Moderators only: the room's roster changed (joins, leaves, promotions); a page of
    `get_participants` may be stale. At most one per room per counts window (250 ms)."""

    seq: int
    counts: Counts


class ViewerUpdated(Message, tag="viewer_updated", frozen=True, kw_only=True):
    """Moderators only: a viewer's metadata or attributes changed."""

    seq: int
    participant: ParticipantInfo


class DataReceived(Message, tag="data", frozen=True, kw_only=True):
    payload: CarriedPayload
    sender_id: Identity | None = None
    sender_sid: Identity | None = None
    topic: Identity | None = None
    reliable: bool = True
    destination_ids: IdList = ()


class TierChanged(Message, tag="tier_changed", frozen=True, kw_only=True):
    """The local participant was promoted or demoted: its new tier, grant and session token."""

    seq: int
    participant: ParticipantInfo
    grant: Grant
    resume_token: Token = ""


class ParticipantsPage(Message, tag="participants_page", frozen=True, kw_only=True):
    """One page of `get_participants`: speakers first, then viewers."""

    id: int
    participants: Annotated[tuple[ParticipantInfo, ...], Meta(max_length=1000)] = ()
    next_cursor: Cursor | None = None
    total: int = 0


class Disconnect(Message, tag="disconnect", frozen=True, kw_only=True):
    """The server ends the session; `reason` is a code such as `DUPLICATE_IDENTITY`."""

    reason: Name
    message: Annotated[str, Meta(max_length=4096)] = ""
    can_reconnect: bool = False


class MediaMoved(Message, tag="media_moved", frozen=True, kw_only=True):
    """Edge -> client: the forwarder that carried this session's media is gone and the
    statekeeper placed the media on another one. The client offers each of its published
    tracks again (same `track_sid`s, on new connections; the room sees no unpublish) and
    answers the new forwarder's subscriber offers, which replace the old connections.
    Added at version 1 (an extension: a client that does not know it skips it)."""

    reason: Name = "FORWARDER_LOST"


class Pong(Message, tag="pong", frozen=True, kw_only=True):
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
    SetVideoQuality,
    SetTrackLayers,
    Ping,
)
"""Every frame a client may send."""
