"""Media-plane messages: statekeeper -> forwarder, edge -> forwarder, forwarder <-> forwarder.

Every participant's media lives on one forwarder, chosen by the statekeeper (least loaded
by `ForwarderHeartbeat`) and kept in the room log (`log.forwarder_assigned`). Peer
connections are per track: a publisher opens one per published track, and a subscriber
gets one per subscribed track, offered by its forwarder.

- ``stagecast.fwd.<forwarder>.sessions`` (core publish, statekeeper -> forwarder): one
  `MediaSession` per changed session, the whole desired state of that session's media on
  that forwarder (level-triggered: applying the same one twice changes nothing).
- ``stagecast.fwd.<forwarder>.rpc`` (request/reply): `PublishOffer` and `IngressOffer` (a
  WHIP client's multi-track offer) -> `ForwarderSdp`;
  `SubscriberAnswer`, `MediaCandidate`, `RestartSubscription`, `SubscriberLayers`,
  `PublisherLayers`, `RelayStart`, `RelayStop` -> `ForwarderOk` / `RelayAccepted`; any
  of them -> `Error` (schemas.client) on failure.
  `RelayKeyframeRequest` is published without a reply.
- ``stagecast.relay.<to-forwarder>.<track>`` (core publish): `RelayPacket`s of a track the
  publisher's forwarder relays to another forwarder that has subscribers for it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.client import MediaTarget, PublishedLayers, RenderedSize, Sdp, VideoQuality
from schemas.codec import MaxBytes, Message, Struct
from schemas.models import MAX_ACTIVE_SPEAKERS, ActiveSpeaker, Identity, TrackKind

RTP_PAYLOAD_BYTES = 1500


class MediaTrackState(Struct, frozen=True, kw_only=True):
    """A track the session publishes, as the forwarder should treat it."""

    track_sid: Identity
    kind: TrackKind
    muted: bool = False


class MediaSubscribedTrack(Struct, frozen=True, kw_only=True):
    """A track the session should receive, and where it is published."""

    track_sid: Identity
    kind: TrackKind
    publisher_id: Identity
    """The publisher's identity (participant id), for the client's `stream-subscribed`."""
    publisher_sid: Identity
    forwarder_id: Identity
    """The forwarder the publisher's media is on (relay from there if it is not this one)."""


class MediaSession(Message, tag="fwd.session", frozen=True, kw_only=True):
    """The desired media of one session on one forwarder; `closed` drops all of it."""

    room_id: Identity
    sid: Identity
    identity: Identity
    subject: Annotated[str, Meta(max_length=1024)]
    """The session's direct subject: where the forwarder sends subscriber offers."""
    seq: int
    """The room-log sequence this state was computed at; older states are ignored."""
    tracks: Annotated[tuple[MediaTrackState, ...], Meta(max_length=64)] = ()
    subscriptions: Annotated[tuple[MediaSubscribedTrack, ...], Meta(max_length=4096)] = ()
    closed: bool = False


class PublishOffer(Message, tag="fwd.publish", frozen=True, kw_only=True):
    """A client's offer for one published track (relayed by its edge)."""

    room_id: Identity
    sid: Identity
    track_sid: Identity
    kind: TrackKind
    sdp: Sdp
    ice_restart: bool = False
    layers: PublishedLayers | None = None
    """The offer's simulcast layers (`SignalOffer.layers`); None keeps what was known."""


class IngressTrack(Struct, frozen=True, kw_only=True):
    """One m-line of an ingress offer and the announced track it publishes."""

    mid: Identity
    track_sid: Identity
    kind: TrackKind


class IngressOffer(Message, tag="fwd.ingress", frozen=True, kw_only=True):
    """A WHIP client's offer: one peer connection carrying every listed track (relayed by
    the edge that owns the ingress session). Answered with `ForwarderSdp`."""

    room_id: Identity
    sid: Identity
    subject: Annotated[str, Meta(max_length=1024)]
    """The session's direct subject: where `IngressEnded` goes."""
    tracks: Annotated[tuple[IngressTrack, ...], Meta(min_length=1, max_length=8)]
    sdp: Sdp


class IngressEnded(Message, tag="fwd.ingress_ended", frozen=True, kw_only=True):
    """Sent by a forwarder to an ingress session's subject when its connection failed,
    closed or never connected: the owning edge ends the session."""

    room_id: Identity
    sid: Identity
    reason: Annotated[str, Meta(max_length=200)]


class SubscriberAnswer(Message, tag="fwd.subscriber_answer", frozen=True, kw_only=True):
    room_id: Identity
    sid: Identity
    track_sid: Identity
    sdp: Sdp


class MediaCandidate(Message, tag="fwd.candidate", frozen=True, kw_only=True):
    room_id: Identity
    sid: Identity
    track_sid: Identity
    target: MediaTarget
    candidate: Annotated[str, Meta(max_length=2048)]
    sdp_mid: Identity | None = None
    sdp_mline_index: int | None = None


class RestartSubscription(Message, tag="fwd.restart_subscription", frozen=True, kw_only=True):
    """Replace a subscriber leg's peer connection (a new offer goes to the client)."""

    room_id: Identity
    sid: Identity
    track_sid: Identity


class SubscriberLayers(Message, tag="fwd.subscriber_layers", frozen=True, kw_only=True):
    """A subscriber's wishes for its leg of a simulcast track (`SetVideoQuality`)."""

    room_id: Identity
    sid: Identity
    track_sid: Identity
    quality: VideoQuality | None = None
    width: RenderedSize | None = None
    height: RenderedSize | None = None


class PublisherLayers(Message, tag="fwd.publisher_layers", frozen=True, kw_only=True):
    """A publisher's new simulcast layers of its track (`SetTrackLayers`)."""

    room_id: Identity
    sid: Identity
    track_sid: Identity
    layers: PublishedLayers = ()


class ForwarderSdp(Message, tag="fwd.sdp", frozen=True, kw_only=True):
    sdp: Sdp


class ForwarderOk(Message, tag="fwd.ok", frozen=True, kw_only=True):
    pass


class RelayCodec(Struct, frozen=True, kw_only=True):
    """A relayed track's codec, as the publisher's forwarder negotiated it."""

    kind: TrackKind
    mime_type: Identity
    clock_rate: int
    channels: int | None = None
    parameters: Annotated[dict[str, str], Meta(max_length=64), MaxBytes(4096)] = msgspec.field(
        default_factory=dict
    )
    """The codec's fmtp parameters (e.g. ``packetization-mode``)."""


class RelayStart(Message, tag="fwd.relay_start", frozen=True, kw_only=True):
    """Ask a track's forwarder to relay it to `to_forwarder` (idempotent)."""

    room_id: Identity
    track_sid: Identity
    to_forwarder: Identity


class RelayAccepted(Message, tag="fwd.relay_accepted", frozen=True, kw_only=True):
    codec: RelayCodec


class RelayStop(Message, tag="fwd.relay_stop", frozen=True, kw_only=True):
    room_id: Identity
    track_sid: Identity
    to_forwarder: Identity


class RelayKeyframeRequest(Message, tag="fwd.keyframe", frozen=True, kw_only=True):
    """A relayed track's downstream forwarder wants a keyframe (rate limited upstream)."""

    track_sid: Identity


class RelayPacket(Message, tag="fwd.rtp", frozen=True, kw_only=True):
    """One RTP packet of a relayed track, as the publisher's forwarder received it."""

    track_sid: Identity
    sequence_number: int
    timestamp: int
    marker: int
    payload: Annotated[bytes, Meta(max_length=RTP_PAYLOAD_BYTES), MaxBytes(RTP_PAYLOAD_BYTES)]
    ssrc: int
    payload_type: int
    voice_activity: bool | None = None
    audio_level: int | None = None
    padding_size: int = 0
    red: bool = False
    """The payload is RED (RFC 2198) around Opus."""


class SpeakerReport(Message, tag="fwd.speakers", frozen=True, kw_only=True):
    """The speaking participants whose audio one forwarder receives, for one room.

    Published on the room's voice subject on change (at most once per 250 ms per room)
    and again every second while not empty, so edges can drop a report of a forwarder
    that went away (`VOICE_REPORT_TTL_MS`). Loudest first.
    """

    room_id: Identity
    forwarder_id: Identity
    speakers: Annotated[tuple[ActiveSpeaker, ...], Meta(max_length=MAX_ACTIVE_SPEAKERS)] = ()


VOICE_REPORT_INTERVAL_MS = 250
"""A forwarder reports a room's speakers at most this often (and only on change)."""
VOICE_REFRESH_MS = 1000
"""A non-empty report is repeated this often, changed or not."""
VOICE_REPORT_TTL_MS = 3000
"""An edge forgets a forwarder's non-empty report this long after it arrived."""


class ForwarderHeartbeat(Message, tag="fwd.heartbeat", frozen=True, kw_only=True):
    """Every forwarder publishes one each second on `stagecast.forwarders.heartbeat`."""

    forwarder_id: Identity
    at: int
    peer_connections: int = 0
    published_tracks: int = 0
    legs: int = 0
    packets_per_s: int = 0
    interval_ms: int = 1000
    stopping: bool = False


MESSAGES = (
    MediaSession,
    PublishOffer,
    IngressOffer,
    IngressEnded,
    SubscriberAnswer,
    MediaCandidate,
    RestartSubscription,
    SubscriberLayers,
    PublisherLayers,
    ForwarderSdp,
    ForwarderOk,
    RelayStart,
    RelayAccepted,
    RelayStop,
    RelayKeyframeRequest,
    RelayPacket,
    ForwarderHeartbeat,
)
