"""The forwarder's media shell: aiortc peer connections in, packets out, no codec work.

A `Forwarder` owns one peer connection per publisher (receive-only: the client's audio and
video) and one per subscriber (send-only: one leg per subscribed track). Packets flow
publisher receiver -> `Router` -> subscriber senders through `rtc.aiortc_adapter`;
nothing is decoded or encoded here. Tracks relayed from another forwarder are published
with `add_relayed_track` (their packets come from the caller). Codec and SDP choices are
`forwarder.negotiation`'s. Signaling (who publishes what, who subscribes to what) is the
caller's: `forwarder.service` does it over NATS.

Over 500 lines: publisher, subscriber and ingress connections share the `Forwarder`'s
state (streams, legs, the router) and its one negotiation path (codecs, simulcast, DTLS
role). The next split would move publisher negotiation into its own module.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCPeerConnection

from forwarder.connectivity import watch_connection
from forwarder.errors import (
    DuplicateSession,
    DuplicateTrack,
    InvalidCandidate,
    InvalidStateError,
    ParticipantNotFound,
    TrackNotFound,
    TracksChanged,
)
from forwarder.layers import LayerSpec, Quality
from forwarder.negotiation import (
    apply_remote,
    capabilities_for,
    codec_info,
    parse_candidate,
    pick_forwardable,
    pick_matching,
    track_codec,
)
from forwarder.router import Router
from forwarder.simulcast_sdp import answer_simulcast, offered_simulcast
from forwarder.simulcast_track import LayerSource, stream_source
from rtc.aiortc_adapter import (
    InboundStream,
    OutboundStream,
    answer_as_dtls_server,
    keep_codecs,
    label_sender,
    negotiated_codecs,
    pass_through_codecs,
    prefer_codecs,
)
from rtc.packets import CodecInfo, MediaKind, MediaPacket

if TYPE_CHECKING:
    from rtc._fanout import FastLeg

logger = logging.getLogger(__name__)


class ForwarderState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class LegState(enum.Enum):
    NEGOTIATING = "negotiating"
    """Offered to the subscriber; not connected yet."""
    FORWARDING = "forwarding"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PublishedTrack:
    track_id: str
    kind: MediaKind
    mid: str
    codec: CodecInfo


@dataclass(frozen=True, slots=True)
class PublisherAnswer:
    """What `add_publisher` returns: the SDP answer and the tracks it published."""

    answer_sdp: str
    tracks: tuple[PublishedTrack, ...]


class SubscriberLeg:
    """One subscribed track on a subscriber's peer connection (a router `Leg`)."""

    def __init__(self, subscriber_id: str, track_id: str) -> None:
        self.subscriber_id = subscriber_id
        self.track_id = track_id
        self.state = LegState.NEGOTIATING
        self.stream: OutboundStream | None = None

    @property
    def leg_id(self) -> str:
        return f"{self.subscriber_id}/{self.track_id}"

    @property
    def fast(self) -> FastLeg | None:
        """The stream's C fan-out (the router sends through it when it can)."""
        return self.stream.fast if self.stream is not None else None

    def send(self, packet: MediaPacket, sequence_number: int) -> Coroutine[Any, Any, bool]:
        # The stream's own coroutine, not one awaiting it: one frame less per packet and
        # leg, which a 100-leg fan-out pays 100 times per packet.
        stream = self.stream
        if stream is None:
            return _not_sent()
        return stream.send(packet, sequence_number)


async def _not_sent() -> bool:
    return False


class _Publisher:
    def __init__(self, publisher_key: str, pc: RTCPeerConnection) -> None:
        self.publisher_key = publisher_key
        self.pc = pc
        self.streams: dict[str, InboundStream] = {}
        self.simulcast: set[str] = set()
        """Tracks whose offer sends simulcast layers (q/h/f)."""
        self.answer_sdp = ""

    def layers(self, track_id: str) -> LayerSource | None:
        """A simulcast track's layer source (None for a single-layer track)."""
        return stream_source(self.streams[track_id]) if track_id in self.simulcast else None


class _Subscriber:
    def __init__(self, subscriber_id: str, pc: RTCPeerConnection) -> None:
        self.subscriber_id = subscriber_id
        self.pc = pc
        self.legs: dict[str, SubscriberLeg] = {}


class Forwarder:
    """Publishers' packets to subscribers, over aiortc peer connections, without decoding.

    `add_publisher` answers a publisher's offer; `add_subscriber` makes the offer for a
    subscriber (one send-only leg per track) and `set_subscriber_answer` completes it.
    `close()` closes every peer connection and is idempotent.
    """

    def __init__(
        self, *, router: Router | None = None, configuration: RTCConfiguration | None = None
    ) -> None:
        self.router = router if router is not None else Router()
        self._configuration = configuration or RTCConfiguration(iceServers=[])
        self._publishers: dict[str, _Publisher] = {}
        self._subscribers: dict[str, _Subscriber] = {}
        self._track_owner: dict[str, str] = {}
        self._relayed: set[str] = set()
        self._epochs: dict[str, int] = {}
        self._next_epoch = 1
        self.state = ForwarderState.OPEN
        self.on_audio_level: Callable[[str, int], None] | None = None
        """Given (track id, -dBov) for every received audio packet carrying an RFC 6464
        level (the active speaker detector's input)."""
        self.on_wanted_layers: Callable[[str, frozenset[int]], None] | None = None
        """Given (track id, layers) when the layers a simulcast track's legs take change
        (dynacast: the publisher sends only those)."""
        self.on_layer_forwarded: Callable[[str, str, int], None] | None = None
        """Given (subscriber id, track id, layer) when a subscriber's leg of a simulcast
        track starts forwarding a layer (at its keyframe)."""

    @property
    def peer_connections(self) -> list[RTCPeerConnection]:
        """Every peer connection this forwarder owns (open or not yet closed)."""
        return [p.pc for p in self._publishers.values()] + [
            s.pc for s in self._subscribers.values()
        ]

    def connection_state(self, publisher_key: str) -> str:
        """A publisher connection's state (``new``, ``connecting``, ``connected``, ...)."""
        publisher = self._publishers.get(publisher_key)
        if publisher is None:
            raise ParticipantNotFound(publisher_key)
        return str(publisher.pc.connectionState)

    def inbound(self, track_id: str) -> InboundStream:
        """The publisher-side stream of a track (for counters and tests)."""
        owner = self._publishers.get(self._track_owner.get(track_id, ""))
        if owner is None or track_id not in owner.streams:
            raise TrackNotFound(track_id)
        return owner.streams[track_id]

    @property
    def subscriber_ids(self) -> list[str]:
        """Every subscriber connection's id (for counters and tests)."""
        return list(self._subscribers)

    def legs(self, subscriber_id: str) -> dict[str, SubscriberLeg]:
        return dict(self._subscriber(subscriber_id).legs)

    def epoch(self, track_id: str) -> int | None:
        """Which publication of `track_id` is current (None: not published).

        Each publish of a track id gets a new epoch, so a caller holding a leg can tell
        whether the track it was made for is still the one published (not a later one
        with the same id). Replacing a publisher's connection keeps the epoch.
        """
        return self._epochs.get(track_id)

    async def add_publisher(
        self,
        offer_sdp: str,
        *,
        publisher_key: str,
        track_ids: Mapping[str, str] | None = None,
        on_state: Callable[[str], None] | None = None,
        dtls_server: bool = False,
    ) -> PublisherAnswer:
        """Answer a publisher's offer: each audio/video it sends becomes a published track.

        `publisher_key` names the connection (`forwarder.sessions` gives each track its own
        connection, keyed by its track sid; a participant id works for a multi-track one).
        `track_ids` maps an offer's MID to the track id to publish it as (the track sid the
        room gave it); a MID not in it becomes ``"<publisher_key>:<mid>"``. The answer keeps
        one codec per track (the offer's first forwardable one), since subscribers get the
        publisher's packets unchanged. `on_state` is told the connection's state
        (``connecting``, ``connected``, ``failed``, ``closed``) each time it changes.
        `dtls_server`: answer ``a=setup:passive`` (`answer_as_dtls_server`), for encoders
        whose DTLS certificate is RSA.
        """
        self._check_open("add_publisher")
        if publisher_key in self._publishers:
            raise DuplicateSession(publisher_key)
        publisher, published = await self._negotiate_publisher(
            offer_sdp, publisher_key, track_ids or {}, keep=None, dtls_server=dtls_server
        )
        try:
            # checked after the awaits: a concurrent call or close() may have come first
            self._check_open("add_publisher")
            if publisher_key in self._publishers:
                raise DuplicateSession(publisher_key)
            for track in published:
                if self._is_published(track.track_id):
                    raise DuplicateTrack(track.track_id)
        except BaseException:
            await _close_quietly(publisher.pc)
            raise
        self._publishers[publisher_key] = publisher
        if on_state is not None:
            pc = publisher.pc
            pc.on("connectionstatechange", lambda: on_state(str(pc.connectionState)))
        for track in published:
            self._track_owner[track.track_id] = publisher_key
            self._epochs[track.track_id] = self._new_epoch()
            self.router.publish(
                track.track_id,
                track.codec,
                request_keyframe=publisher.streams[track.track_id].request_keyframe,
                simulcast=publisher.layers(track.track_id),
            )
            simulcast = self.router.simulcast(track.track_id)
            if simulcast is not None:
                simulcast.on_wanted_layers = functools.partial(self._wanted, track.track_id)
                simulcast.on_layer_switched = self._switched
        return PublisherAnswer(answer_sdp=publisher.answer_sdp, tracks=published)

    async def replace_publisher(
        self, publisher_key: str, offer_sdp: str, *, track_ids: Mapping[str, str] | None = None
    ) -> PublisherAnswer:
        """Answer a publisher's new offer with a new peer connection, its tracks kept.

        For an ICE restart or a network change (aiortc cannot restart ICE in place). The
        offer must carry the same tracks (`track_ids` as in `add_publisher`), each in the
        codec its legs already use (`CodecChanged`, `TracksChanged` otherwise). Every leg
        stays attached and resumes at the new connection's next keyframe; the old
        connection stops forwarding at once and is closed.
        """
        self._check_open("replace_publisher")
        old = self._publishers.get(publisher_key)
        if old is None:
            raise ParticipantNotFound(publisher_key)
        keep = {track_id: self.router.codec(track_id) for track_id in old.streams}
        publisher, published = await self._negotiate_publisher(
            offer_sdp, publisher_key, track_ids or {}, keep=keep
        )
        try:
            self._check_open("replace_publisher")
            if self._publishers.get(publisher_key) is not old:  # removed or replaced meanwhile
                raise ParticipantNotFound(publisher_key)
            offered = sorted(t.track_id for t in published)
            if offered != sorted(keep):
                raise TracksChanged(publisher_key, sorted(keep), offered)
        except BaseException:
            await _close_quietly(publisher.pc)
            raise
        for stream in old.streams.values():
            stream.close()
        self._publishers[publisher_key] = publisher
        for track in published:
            self.router.replace_source(
                track.track_id,
                publisher.streams[track.track_id].request_keyframe,
                simulcast=publisher.layers(track.track_id),
            )
        await _close_quietly(old.pc)
        return PublisherAnswer(answer_sdp=publisher.answer_sdp, tracks=published)

    async def _negotiate_publisher(
        self,
        offer_sdp: str,
        publisher_key: str,
        track_ids: Mapping[str, str],
        *,
        keep: Mapping[str, CodecInfo] | None,
        dtls_server: bool = False,
    ) -> tuple[_Publisher, tuple[PublishedTrack, ...]]:
        """A new publisher connection with its answer made, not registered anywhere yet.

        `keep` (a replacement): the codec each track must stay in. On failure the new
        connection is closed before the error propagates.
        """
        pc = RTCPeerConnection(self._configuration)
        watch_connection(pc, f"publisher {publisher_key}")
        publisher = _Publisher(publisher_key, pc)
        published: list[PublishedTrack] = []
        simulcast = offered_simulcast(offer_sdp)
        try:
            with pass_through_codecs():
                await apply_remote(pc, offer_sdp, "offer")
            for transceiver in pc.getTransceivers():
                if transceiver.receiver.track is None or transceiver.mid is None:
                    continue  # nothing to receive on this m-line
                kind: MediaKind = "video" if transceiver.kind == "video" else "audio"
                mid = transceiver.mid
                track_id = track_ids.get(mid, f"{publisher_key}:{mid}")
                if any(t.track_id == track_id for t in published):
                    raise DuplicateTrack(track_id)
                offered = negotiated_codecs(transceiver)
                if keep is None:
                    codecs = pick_forwardable(kind, offered)
                else:
                    if track_id not in keep:
                        raise TracksChanged(publisher_key, sorted(keep), [track_id])
                    codecs = pick_matching(track_id, keep[track_id], kind, offered)
                keep_codecs(transceiver, codecs)
                codec = codec_info(kind, track_codec(codecs)) if keep is None else keep[track_id]
                published.append(PublishedTrack(track_id, kind, mid, codec))
                forward = self._forward_audio if kind == "audio" else self.router.forward
                layered = kind == "video" and mid in simulcast
                # No REMB to a simulcast publisher: aiortc's estimate trails what arrives,
                # so after dynacast paused layers it would keep them from coming back.
                publisher.streams[track_id] = InboundStream(
                    transceiver.receiver, functools.partial(forward, track_id), remb=not layered
                )
                if layered:
                    publisher.simulcast.add(track_id)
            with pass_through_codecs():
                if dtls_server:
                    await answer_as_dtls_server(pc)
                else:
                    await pc.setLocalDescription(await pc.createAnswer())
            video_mids = {t.mid for t in published if t.track_id in publisher.simulcast}
            publisher.answer_sdp = answer_simulcast(
                pc.localDescription.sdp,
                {mid: rids for mid, rids in simulcast.items() if mid in video_mids},
            )
        except BaseException:
            for stream in publisher.streams.values():
                stream.close()
            await _close_quietly(pc)
            raise
        return publisher, tuple(published)

    async def remove_publisher(self, publisher_key: str) -> None:
        """Unpublish the publisher's tracks (their legs go idle) and close its connection."""
        publisher = self._publishers.pop(publisher_key, None)
        if publisher is None:
            raise ParticipantNotFound(publisher_key)
        for track_id, stream in publisher.streams.items():
            self._track_owner.pop(track_id, None)
            self._epochs.pop(track_id, None)
            for leg_id in self.router.unpublish(track_id):
                self._close_leg(leg_id)
            stream.close()
        await publisher.pc.close()

    def add_relayed_track(
        self, track_id: str, codec: CodecInfo, *, request_keyframe: Callable[[], None]
    ) -> None:
        """Publish a track whose packets another forwarder relays here.

        The caller feeds its packets to `router.forward(track_id, packet)`;
        `request_keyframe()` asks the origin for a keyframe.
        """
        self._check_open("add_relayed_track")
        if self._is_published(track_id):
            raise DuplicateTrack(track_id)
        self.router.publish(track_id, codec, request_keyframe=request_keyframe)
        self._relayed.add(track_id)
        self._epochs[track_id] = self._new_epoch()

    def remove_relayed_track(self, track_id: str) -> None:
        """Unpublish a relayed track; its legs go idle (as in `remove_publisher`)."""
        if track_id not in self._relayed:
            raise TrackNotFound(track_id)
        self._relayed.discard(track_id)
        self._epochs.pop(track_id, None)
        for leg_id in self.router.unpublish(track_id):
            self._close_leg(leg_id)

    async def add_subscriber(self, subscriber_id: str, track_ids: Sequence[str]) -> str:
        """Make the SDP offer for a subscriber: one send-only leg per published track.

        The leg's msid is ``<publisher id> <track id>``, so the subscriber's remote track
        id is the track id. Forwarding starts once the answer is applied and connected.
        """
        self._check_open("add_subscriber")
        if subscriber_id in self._subscribers:
            raise DuplicateSession(subscriber_id)
        codecs = {track_id: self.router.codec(track_id) for track_id in track_ids}
        pc = RTCPeerConnection(self._configuration)
        watch_connection(pc, f"subscriber {subscriber_id}")
        subscriber = _Subscriber(subscriber_id, pc)
        try:
            for track_id, codec in codecs.items():
                transceiver = pc.addTransceiver(codec.kind, direction="sendonly")
                prefer_codecs(transceiver, capabilities_for(codec))
                leg = SubscriberLeg(subscriber_id, track_id)
                leg.stream = OutboundStream(
                    transceiver.sender,
                    on_keyframe_request=functools.partial(self.router.request_keyframe, track_id),
                    on_ready=functools.partial(self._leg_ready, leg),
                )
                stream_id = self._track_owner.get(track_id, track_id)
                label_sender(transceiver.sender, stream_id=stream_id, track_id=track_id)
                subscriber.legs[track_id] = leg
            with pass_through_codecs():
                await pc.setLocalDescription(await pc.createOffer())
            self._check_open("add_subscriber")  # after the awaits, as in add_publisher
            if subscriber_id in self._subscribers:
                raise DuplicateSession(subscriber_id)
        except BaseException:
            await _close_quietly(pc)
            raise
        self._subscribers[subscriber_id] = subscriber
        return str(pc.localDescription.sdp)

    async def set_subscriber_answer(self, subscriber_id: str, answer_sdp: str) -> None:
        """Apply the subscriber's answer; its legs start forwarding once connected."""
        self._check_open("set_subscriber_answer")
        subscriber = self._subscriber(subscriber_id)
        with pass_through_codecs():
            await apply_remote(subscriber.pc, answer_sdp, "answer")

    async def add_ice_candidate(
        self,
        peer_id: str,
        candidate: str,
        *,
        publisher: bool,
        sdp_mid: str | None = None,
        sdp_mline_index: int | None = None,
    ) -> None:
        """Add a remote ICE candidate to a publisher's (or subscriber's) connection.

        `candidate` is the SDP attribute value (``candidate:...``, the prefix optional);
        an empty one signals the end of the remote candidates.
        """
        sessions: Mapping[str, _Publisher | _Subscriber] = (
            self._publishers if publisher else self._subscribers
        )
        session = sessions.get(peer_id)
        if session is None:
            raise ParticipantNotFound(peer_id)
        parsed = parse_candidate(candidate, sdp_mid, sdp_mline_index)
        try:
            await session.pc.addIceCandidate(parsed)
        except ValueError as exc:
            raise InvalidCandidate(candidate, str(exc)) from None

    def unsubscribe(self, subscriber_id: str, track_id: str) -> None:
        """Stop forwarding a track to a subscriber (its sender idles until renegotiation)."""
        leg = self._subscriber(subscriber_id).legs.get(track_id)
        if leg is None:
            raise TrackNotFound(track_id)
        self.router.unsubscribe(track_id, leg.leg_id)
        leg.state = LegState.CLOSED

    async def remove_subscriber(self, subscriber_id: str) -> None:
        """Drop every leg of a subscriber and close its peer connection."""
        subscriber = self._subscribers.pop(subscriber_id, None)
        if subscriber is None:
            raise ParticipantNotFound(subscriber_id)
        for leg in subscriber.legs.values():
            self.router.unsubscribe(leg.track_id, leg.leg_id)
            leg.state = LegState.CLOSED
        await subscriber.pc.close()

    def set_muted(self, track_id: str, muted: bool) -> None:
        """Mute (forward nothing) or unmute a published track."""
        self.router.set_muted(track_id, muted)

    async def close(self) -> None:
        """Close every peer connection and forget every track. Idempotent."""
        if self.state is ForwarderState.CLOSED:
            return
        self.state = ForwarderState.CLOSED
        for subscriber_id in list(self._subscribers):
            await self.remove_subscriber(subscriber_id)
        for publisher_key in list(self._publishers):
            await self.remove_publisher(publisher_key)
        for track_id in list(self._relayed):
            self.remove_relayed_track(track_id)
        self.router.close()

    async def _forward_audio(self, track_id: str, packet: MediaPacket) -> int:
        level = packet.audio_level
        on_level = self.on_audio_level
        if level is not None and on_level is not None:
            on_level(track_id, level[1])
        return await self.router.forward(track_id, packet)

    def set_video_quality(
        self,
        subscriber_id: str,
        track_id: str,
        *,
        quality: Quality | None,
        rendered: tuple[int, int] | None,
    ) -> None:
        """A subscriber's wishes for its leg of a simulcast track (now or once forwarding);
        nothing for a single-layer track."""
        simulcast = self.router.simulcast(track_id) if track_id in self.router.track_ids else None
        if simulcast is not None:
            simulcast.prefer(f"{subscriber_id}/{track_id}", quality=quality, rendered=rendered)

    def announce_layers(self, track_id: str, layers: tuple[LayerSpec, ...] | None) -> None:
        """The publisher's account of a simulcast track's layers (None: it gave none, the
        forwarder learns or assumes them); nothing for a single-layer track."""
        simulcast = self.router.simulcast(track_id) if track_id in self.router.track_ids else None
        if simulcast is not None:
            simulcast.announce(layers)

    def _wanted(self, track_id: str, layers: frozenset[int]) -> None:
        if self.on_wanted_layers is not None:
            self.on_wanted_layers(track_id, layers)

    def _switched(self, leg_id: str, layer: int) -> None:
        subscriber_id, _, track_id = leg_id.partition("/")
        if self.on_layer_forwarded is not None and subscriber_id in self._subscribers:
            self.on_layer_forwarded(subscriber_id, track_id, layer)

    def _is_published(self, track_id: str) -> bool:
        return track_id in self._track_owner or track_id in self._relayed

    def _new_epoch(self) -> int:
        epoch = self._next_epoch
        self._next_epoch += 1
        return epoch

    def _leg_ready(self, leg: SubscriberLeg, stream: OutboundStream) -> None:
        if leg.state is not LegState.NEGOTIATING or not self._is_published(leg.track_id):
            return
        leg.state = LegState.FORWARDING
        self.router.subscribe(leg.track_id, leg)
        simulcast = self.router.simulcast(leg.track_id)
        if simulcast is not None:
            stream.on_feedback = lambda loss, remb: simulcast.on_link_report(
                leg.leg_id, loss_fraction=loss, remb=remb
            )

    def _close_leg(self, leg_id: str) -> None:
        subscriber_id, _, track_id = leg_id.partition("/")
        subscriber = self._subscribers.get(subscriber_id)
        leg = subscriber.legs.get(track_id) if subscriber is not None else None
        if leg is not None:
            leg.state = LegState.CLOSED

    def _subscriber(self, subscriber_id: str) -> _Subscriber:
        subscriber = self._subscribers.get(subscriber_id)
        if subscriber is None:
            raise ParticipantNotFound(subscriber_id)
        return subscriber

    def _check_open(self, what: str) -> None:
        if self.state is not ForwarderState.OPEN:
            raise InvalidStateError(what, self.state.value)


async def _close_quietly(pc: RTCPeerConnection) -> None:
    try:
        await pc.close()
    except Exception:
        logger.exception("closing a peer connection after a failed negotiation")
