"""Media-plane messages: statekeeper -> forwarder, edge -> forwarder, forwarder <-> forwarder.

Every participant's media lives on one forwarder, chosen by the statekeeper (least loaded
by `ForwarderHeartbeat`) and kept in the room log (`log.forwarder_assigned`). Peer
connections are per track: a publisher opens one per published track, and a subscriber
gets one per subscribed track, offered by its forwarder.

- ``stagecast.fwd.<forwarder>.sessions`` (core publish, statekeeper -> forwarder): one
  `MediaSession` per changed session, the whole desired state of that session's media on
  that forwarder (level-triggered: applying the same one twice changes nothing).
- ``stagecast.fwd.<forwarder>.rpc`` (request/reply): `PublishOffer` -> `ForwarderSdp`;
  `SubscriberAnswer`, `MediaCandidate`, `RestartSubscription`, `RelayStart`, `RelayStop`
  -> `ForwarderOk` / `RelayAccepted`; any of them -> `Error` (schemas.client) on failure.
  `RelayKeyframeRequest` is published without a reply.
- ``stagecast.relay.<to-forwarder>.<track>`` (core publish): `RelayPacket`s of a track the
  publisher's forwarder relays to another forwarder that has subscribers for it.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from schemas.client import MediaTarget, Sdp
from schemas.codec import MaxBytes, MaxItems, MaxLen, Message, Struct, message, struct
from schemas.models import Identity, TrackKind

RTP_PAYLOAD_BYTES = 1500


@struct
class MediaTrackState(Struct):
    """A track the session publishes, as the forwarder should treat it."""

    track_sid: Identity
    kind: TrackKind
    muted: bool = False


@struct
class MediaSubscribedTrack(Struct):
    """A track the session should receive, and where it is published."""

    track_sid: Identity
    kind: TrackKind
    publisher_id: Identity
    """The publisher's identity (participant id), for the client's `stream-subscribed`."""
    publisher_sid: Identity
    forwarder_id: Identity
    """The forwarder the publisher's media is on (relay from there if it is not this one)."""


@message("fwd.session")
class MediaSession(Message):
    """The desired media of one session on one forwarder; `closed` drops all of it."""

    room_id: Identity
    sid: Identity
    identity: Identity
    subject: Annotated[str, MaxLen(1024)]
    """The session's direct subject: where the forwarder sends subscriber offers."""
    seq: int
    """The room-log sequence this state was computed at; older states are ignored."""
    tracks: Annotated[tuple[MediaTrackState, ...], MaxItems(64)] = ()
    subscriptions: Annotated[tuple[MediaSubscribedTrack, ...], MaxItems(4096)] = ()
    closed: bool = False


@message("fwd.publish")
class PublishOffer(Message):
    """A client's offer for one published track (relayed by its edge)."""

    room_id: Identity
    sid: Identity
    track_sid: Identity
    kind: TrackKind
    sdp: Sdp
    ice_restart: bool = False


@message("fwd.subscriber_answer")
class SubscriberAnswer(Message):
    room_id: Identity
    sid: Identity
    track_sid: Identity
    sdp: Sdp


@message("fwd.candidate")
class MediaCandidate(Message):
    room_id: Identity
    sid: Identity
    track_sid: Identity
    target: MediaTarget
    candidate: Annotated[str, MaxLen(2048)]
    sdp_mid: Identity | None = None
    sdp_mline_index: int | None = None


@message("fwd.restart_subscription")
class RestartSubscription(Message):
    """Replace a subscriber leg's peer connection (a new offer goes to the client)."""

    room_id: Identity
    sid: Identity
    track_sid: Identity


@message("fwd.sdp")
class ForwarderSdp(Message):
    sdp: Sdp


@message("fwd.ok")
class ForwarderOk(Message):
    pass


@struct
class RelayCodec(Struct):
    """A relayed track's codec, as the publisher's forwarder negotiated it."""

    kind: TrackKind
    mime_type: Identity
    clock_rate: int
    channels: int | None = None
    parameters: Annotated[dict[str, str], MaxItems(64), MaxBytes(4096)] = dataclasses.field(
        default_factory=dict
    )
    """The codec's fmtp parameters (e.g. ``packetization-mode``)."""


@message("fwd.relay_start")
class RelayStart(Message):
    """Ask a track's forwarder to relay it to `to_forwarder` (idempotent)."""

    room_id: Identity
    track_sid: Identity
    to_forwarder: Identity


@message("fwd.relay_accepted")
class RelayAccepted(Message):
    codec: RelayCodec


@message("fwd.relay_stop")
class RelayStop(Message):
    room_id: Identity
    track_sid: Identity
    to_forwarder: Identity


@message("fwd.keyframe")
class RelayKeyframeRequest(Message):
    """A relayed track's downstream forwarder wants a keyframe (rate limited upstream)."""

    track_sid: Identity


@message("fwd.rtp")
class RelayPacket(Message):
    """One RTP packet of a relayed track, as the publisher's forwarder received it."""

    track_sid: Identity
    sequence_number: int
    timestamp: int
    marker: int
    payload: Annotated[bytes, MaxBytes(RTP_PAYLOAD_BYTES)]
    ssrc: int
    payload_type: int
    voice_activity: bool | None = None
    audio_level: int | None = None
    padding_size: int = 0


@message("fwd.heartbeat")
class ForwarderHeartbeat(Message):
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
    SubscriberAnswer,
    MediaCandidate,
    RestartSubscription,
    ForwarderSdp,
    ForwarderOk,
    RelayStart,
    RelayAccepted,
    RelayStop,
    RelayKeyframeRequest,
    RelayPacket,
    ForwarderHeartbeat,
)
