"""The one module that reaches into aiortc's private internals (STYLE rule 9).

(Over 500 lines on purpose: every aiortc private name stays in this one module, so a new
aiortc release is checked in one place, by tests/test_rtc_adapter.py.)

aiortc decodes everything it receives and encodes everything it sends; a forwarder must do
neither. This adapter turns aiortc's receivers and senders into packet pipes:

- `InboundStream` hooks a publisher-side `RTCRtpReceiver`: its decoder thread is stopped
  as soon as aiortc starts it, and every RTP packet (after SRTP, with RTX unwrapped) goes
  to a callback instead of the jitter buffer. Receiver reports, NACKs and REMB to the
  publisher keep working; `request_keyframe()` sends a PLI (or FIR) to the media SSRC.
- `OutboundStream` hooks a subscriber-side, track-less `RTCRtpSender`: aiortc's RTP loop
  is replaced by an idle one (no encoder is ever created), `send()` writes one packet with
  the leg's SSRC, payload type and MID through the leg's SRTP session and keeps its bytes
  in a history that answers the subscriber's NACKs (with RTX when negotiated); the
  subscriber's PLI/FIR reach `on_keyframe_request`. `drop` injects loss (for tests and
  fault drills) after a packet entered the history, so NACK/RTX repairs it. Once ICE and
  DTLS have settled, a leg's packets skip aiortc's `_send_rtp`, aioice and asyncio's
  transport (`_DirectPath`: SRTP into a reused buffer, `sendto` on the nominated pair's
  socket), and the sender-report fields are filled right before aiortc's RTCP loop reads
  them rather than on every packet: the per-leg cost is what a 100-subscriber fan-out
  pays 100 times per packet (docs/benchmarks.md, media).

Pass-through codecs: aiortc negotiates only the codecs it can encode and decode (VP8, H.264,
Opus, G.722, G.711). A forwarder does neither, so it also negotiates VP9 and AV1
(`PASS_THROUGH_CODECS`) on its own connections: aiortc's peer connection reads its codec
table through `_CodecTable`, which adds them only inside `pass_through_codecs()` (a context
variable, so an SDK peer in the same process never offers a codec it cannot decode).
`codec_capabilities` and `prefer_codecs` are the matching capability list and
setCodecPreferences.

`allow_loopback_candidates()` makes aioice (aiortc's ICE) offer 127.0.0.1 on a host with
no other IPv4 address, such as a loopback-only network namespace.

Every private name used is listed in `PRIVATE_*` below; tests/test_rtc_adapter.py
checks each of them on the pinned version, so an aiortc upgrade fails loudly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import struct
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aioice.ice
import aiortc
import aiortc.codecs
import aiortc.rtcdtlstransport
import aiortc.rtcpeerconnection
import pylibsrtp
from aiortc import (
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
    unwrap_rtx,
    wrap_rtx,
)
from aiortc.utils import uint16_add

from rtc import fanout
from rtc.direct_send import DatagramRoute, SrtpProtector, resuming, srtp_pointers
from rtc.errors import InvalidStateError, UnsupportedAiortc
from rtc.packets import MediaPacket, RtpWriter, red_primary, red_retyped

AIORTC_VERSION = "1.16.0"

if aiortc.__version__ != AIORTC_VERSION:
    raise UnsupportedAiortc(found=aiortc.__version__, expected=AIORTC_VERSION)

logger = logging.getLogger(__name__)

# -- every private name this module touches (checked by tests/test_rtc_adapter.py) --
_R = "_RTCRtpReceiver__"
_S = "_RTCRtpSender__"
R_CODECS = _R + "codecs"  # dict[pt, RTCRtpCodecParameters], filled by receive()
R_RTX_SSRC = _R + "rtx_ssrc"  # dict[rtx ssrc, media ssrc], filled by receive()
R_REMOTE_STREAMS = _R + "remote_streams"  # dict[ssrc, StreamStatistics] -> RTCP RR
R_NACK_GENERATOR = _R + "nack_generator"  # NackGenerator | None (video only)
R_BITRATE_ESTIMATOR = _R + "remote_bitrate_estimator"  # RemoteBitrateEstimator | None
R_RTCP_SSRC = _R + "rtcp_ssrc"  # int | None, our SSRC in RTCP feedback
R_DECODER_THREAD = _R + "decoder_thread"  # threading.Thread | None
R_STOP_DECODER = _R + "stop_decoder"  # () -> None
S_STARTED = _S + "started"
S_RTP_STARTED = _S + "rtp_started"  # asyncio.Event awaited by stop()
S_RTP_EXITED = _S + "rtp_exited"  # asyncio.Event awaited by stop()
S_HEADER_EXTENSIONS_MAP = _S + "rtp_header_extensions_map"  # configured by send()
S_RTX_PAYLOAD_TYPE = _S + "rtx_payload_type"  # int | None, set by send()
S_NTP_TIMESTAMP = _S + "ntp_timestamp"  # the four RTCP SR fields
S_RTP_TIMESTAMP = _S + "rtp_timestamp"
S_OCTET_COUNT = _S + "octet_count"
S_PACKET_COUNT = _S + "packet_count"

PRIVATE_RECEIVER_ATTRIBUTES = (
    R_CODECS,
    R_RTX_SSRC,
    R_REMOTE_STREAMS,
    R_NACK_GENERATOR,
    R_BITRATE_ESTIMATOR,
    R_RTCP_SSRC,
    R_DECODER_THREAD,
    "_enabled",
)
PRIVATE_RECEIVER_METHODS = (
    "_handle_rtp_packet",
    "_send_rtcp",
    "_send_rtcp_nack",
    "_send_rtcp_pli",
    R_STOP_DECODER,
)
PRIVATE_SENDER_ATTRIBUTES = (
    S_STARTED,
    S_RTP_STARTED,
    S_RTP_EXITED,
    S_HEADER_EXTENSIONS_MAP,
    S_RTX_PAYLOAD_TYPE,
    S_NTP_TIMESTAMP,
    S_RTP_TIMESTAMP,
    S_OCTET_COUNT,
    S_PACKET_COUNT,
    "_ssrc",
    "_rtx_ssrc",
    "_enabled",
    "_stream_id",
    "_track_id",
)
PRIVATE_SENDER_METHODS = (
    "_run_rtp",
    "_run_rtcp",
    "_send_keyframe",
    "_handle_rtcp_packet",
    "_retransmit",
)
PRIVATE_TRANSPORT_NAMES = ("_send_rtp", "_rtp_router", "_state", "_tx_srtp")  # RTCDtlsTransport
PRIVATE_ICE_NAMES = ("_connection",)  # on RTCIceTransport: its aioice Connection
PRIVATE_AIOICE_NAMES = ("_nominated",)  # on aioice's Connection: component -> CandidatePair
PRIVATE_ASYNCIO_NAMES = ("_sock",)  # on asyncio's selector datagram transport
PRIVATE_TRANSCEIVER_ATTRIBUTES = ("_codecs", "_preferred_codecs")
PRIVATE_MODULE_NAMES = (
    (aiortc.rtcpeerconnection, "CODECS"),
    (aiortc.rtcpeerconnection, "HEADER_EXTENSIONS"),
)
"""Module globals replaced here (`_CodecTable`, `_HeaderExtensionTable`)."""

_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
_AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"

PacketHandler = Callable[[MediaPacket], Awaitable[object]]
AIOICE_HOST_ADDRESSES = "get_host_addresses"  # aioice.ice: (use_ipv4, use_ipv6) -> [address]

_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_ABS_SEND_TIME_UNITS = 1 << 18  # 6.18 fixed point seconds; the offset above is 0 mod 64


def _pass_through_video(
    mime_type: str, payload_type: int, **parameters: str | int
) -> list[RTCRtpCodecParameters]:
    feedback = [
        RTCRtcpFeedback(type="nack"),
        RTCRtcpFeedback(type="nack", parameter="pli"),
        RTCRtcpFeedback(type="goog-remb"),
    ]
    return [
        RTCRtpCodecParameters(
            mimeType=mime_type,
            clockRate=90000,
            payloadType=payload_type,
            rtcpFeedback=feedback,
            parameters=dict(parameters),
        ),
        RTCRtpCodecParameters(
            mimeType="video/rtx",
            clockRate=90000,
            payloadType=payload_type + 1,
            parameters={"apt": payload_type},
        ),
    ]


RED_PAYLOAD_TYPE = 63
"""RED's payload type in the forwarder's offers (as Chromium's); its fmtp names aiortc's
Opus payload type, 96."""

PASS_THROUGH_CODECS: dict[str, list[RTCRtpCodecParameters]] = {
    "audio": [
        RTCRtpCodecParameters(
            mimeType="audio/red",
            clockRate=48000,
            channels=2,
            payloadType=RED_PAYLOAD_TYPE,
            parameters={"96/96": None},
        )
    ],
    "video": [
        *_pass_through_video("video/VP9", 103, **{"profile-id": 0}),
        *_pass_through_video("video/AV1", 105),
    ],
}
"""Codecs a forwarder carries without an aiortc encoder or decoder (after aiortc's own,
so a publisher offering several gets the one it lists first among all of them)."""

_pass_through = contextvars.ContextVar("stagecast_pass_through_codecs", default=False)


class _CodecTable(dict[str, list[RTCRtpCodecParameters]]):
    """aiortc's codec table, plus `PASS_THROUGH_CODECS` inside `pass_through_codecs()`."""

    def __getitem__(self, kind: str) -> list[RTCRtpCodecParameters]:
        own = super().__getitem__(kind)
        if _pass_through.get():
            return own + PASS_THROUGH_CODECS.get(kind, [])
        return own


if not isinstance(getattr(aiortc.rtcpeerconnection, "CODECS"), _CodecTable):  # noqa: B009
    setattr(aiortc.rtcpeerconnection, "CODECS", _CodecTable(aiortc.codecs.CODECS))  # noqa: B010

PASS_THROUGH_HEADER_EXTENSIONS: dict[str, list[RTCRtpHeaderExtensionParameters]] = {
    "video": [
        RTCRtpHeaderExtensionParameters(id=10, uri=RID_URI),
        RTCRtpHeaderExtensionParameters(id=11, uri=REPAIRED_RID_URI),
    ]
}
"""Header extensions a forwarder accepts on its own connections: the simulcast rids (RFC
8852), which tell which layer (and which layer's RTX) a packet belongs to."""


class _HeaderExtensionTable(dict[str, list[RTCRtpHeaderExtensionParameters]]):
    """aiortc's header extensions, plus the rid ones inside `pass_through_codecs()`."""

    def __getitem__(self, kind: str) -> list[RTCRtpHeaderExtensionParameters]:
        own = super().__getitem__(kind)
        if _pass_through.get():
            return own + PASS_THROUGH_HEADER_EXTENSIONS.get(kind, [])
        return own


if not isinstance(
    getattr(aiortc.rtcpeerconnection, "HEADER_EXTENSIONS"),  # noqa: B009
    _HeaderExtensionTable,
):
    setattr(  # noqa: B010
        aiortc.rtcpeerconnection,
        "HEADER_EXTENSIONS",
        _HeaderExtensionTable(aiortc.codecs.HEADER_EXTENSIONS),
    )


@contextlib.contextmanager
def pass_through_codecs() -> Iterator[None]:
    """Offer and accept `PASS_THROUGH_CODECS` and `PASS_THROUGH_HEADER_EXTENSIONS` in the
    peer connection calls made inside (this task only: createOffer, createAnswer,
    setRemoteDescription)."""
    token = _pass_through.set(True)
    try:
        yield
    finally:
        _pass_through.reset(token)


def codec_capabilities(kind: str) -> list[RTCRtpCodecCapability]:
    """What a forwarder can carry for `kind`: aiortc's capabilities and the pass-through
    codecs (each followed by its RTX, as aiortc lists them)."""
    extra = [
        RTCRtpCodecCapability(
            mimeType=c.mimeType, clockRate=c.clockRate, channels=c.channels, parameters=c.parameters
        )
        for c in PASS_THROUGH_CODECS.get(kind, [])
        if not is_rtx(c)
    ]
    return list(RTCRtpSender.getCapabilities(kind).codecs) + extra


def prefer_codecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecCapability]) -> None:
    """setCodecPreferences, pass-through codecs allowed (aiortc's refuses those)."""
    transceiver._preferred_codecs = list(codecs)


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs aiortc negotiated for `transceiver` (after setRemoteDescription)."""
    codecs: list[RTCRtpCodecParameters] = transceiver._codecs
    return list(codecs)


def keep_codecs(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """Narrow the negotiated codecs before createAnswer, so the answer offers only these."""
    transceiver._codecs = list(codecs)


def label_sender(sender: RTCRtpSender, *, stream_id: str, track_id: str) -> None:
    """Set the msid (stream id, track id) the next offer announces for `sender`."""
    sender._stream_id = stream_id
    sender._track_id = track_id


async def answer_as_dtls_server(pc: aiortc.RTCPeerConnection) -> None:
    """Create and set the answer with ``a=setup:passive``: the remote end is the DTLS client.

    aiortc answers ``active`` by default, and as a DTLS client it offers ECDSA cipher suites
    only, which a peer with an RSA certificate (GStreamer's webrtcbin, say) cannot accept
    ("no shared cipher"). As the DTLS server, aiortc's ECDSA certificate sets the suite.
    aiortc takes the role from the description it is given (checked by the adapter test).
    """
    answer = await pc.createAnswer()
    sdp = answer.sdp.replace("a=setup:active", "a=setup:passive")
    await pc.setLocalDescription(aiortc.RTCSessionDescription(sdp=sdp, type=answer.type))


def allow_loopback_candidates() -> None:
    """Offer 127.0.0.1 as a host candidate when the host has no other IPv4 address.

    aioice never gathers loopback addresses, so where `lo` is the only interface (a
    private network namespace, as the browser tests use) every peer connection gathers
    nothing and never connects. Process-wide and idempotent; a host with another IPv4
    address gathers exactly what it did before.
    """
    original: Callable[[bool, bool], list[str]] = getattr(aioice.ice, AIOICE_HOST_ADDRESSES)
    if getattr(original, "loopback_when_alone", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = list(original(use_ipv4, use_ipv6))
        if use_ipv4 and all(":" in address for address in addresses):
            addresses.append("127.0.0.1")
        return addresses

    get_host_addresses.loopback_when_alone = True  # type: ignore[attr-defined]
    setattr(aioice.ice, AIOICE_HOST_ADDRESSES, get_host_addresses)


def tap_transport_sends(
    transport: Any, send: Callable[[bytes], Awaitable[None]]
) -> Callable[[bytes], Awaitable[None]]:
    """Route every datagram a DTLS transport writes (RTP and RTCP) through `send`.

    Returns the transport's own writer, which `send` must call to put the bytes on the
    wire. For measurement (the media benchmark stamps each packet before it leaves).
    """
    original: Callable[[bytes], Awaitable[None]] = getattr(transport, "_send_rtp")  # noqa: B009
    setattr(transport, "_send_rtp", send)  # noqa: B010 - instance override on purpose
    return original


def tap_datagrams_received(transport: Any, on_datagram: Callable[[bytes], object]) -> None:
    """Show `on_datagram(data)` each datagram a DTLS transport's ICE connection receives
    that is not STUN (DTLS, SRTP, SRTCP: still encrypted), when the socket read hands it
    over, before it waits in aioice's queue for the transport's loop.

    For measurement (the media benchmark stamps when each publisher packet left the
    socket). aioice's `StunProtocol` calls `data_received` on its connection for these.
    """
    connection: Any = transport.transport._connection
    original: Callable[[bytes, int], None] = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        on_datagram(data)
        original(data, component)

    setattr(connection, "data_received", data_received)  # noqa: B010 - instance override


def tap_receiver_packets(
    receiver: RTCRtpReceiver, on_packet: Callable[[RtpPacket, int], Awaitable[None]]
) -> None:
    """Hand each RTP packet a receiver gets to `on_packet(packet, arrival_time_ms)` instead
    of aiortc's depacketizer (nothing is decoded: for counting packets cheaply)."""
    setattr(receiver, "_handle_rtp_packet", on_packet)  # noqa: B010 - instance override


class InboundStream:
    """A publisher-side receiver whose packets go to `on_packet`, never to a decoder.

    Attach it after setRemoteDescription and before the connection is up (aiortc calls
    `receive()` once DTLS is connected; the decoder thread it starts there is stopped at
    once). `on_packet` is awaited for each packet, in arrival order. `remb=False` skips
    the bandwidth estimate (REMB) sent back to the publisher.
    """

    def __init__(
        self, receiver: RTCRtpReceiver, on_packet: PacketHandler, *, remb: bool = True
    ) -> None:
        self._receiver = receiver
        self._on_packet = on_packet
        self._codecs: dict[int, RTCRtpCodecParameters] = getattr(receiver, R_CODECS)
        self._rtx_ssrc: dict[int, int] = getattr(receiver, R_RTX_SSRC)
        self._streams: dict[int, Any] = getattr(receiver, R_REMOTE_STREAMS)
        self._nack_generator: Any = getattr(receiver, R_NACK_GENERATOR)
        self._estimator: Any = getattr(receiver, R_BITRATE_ESTIMATOR) if remb else None
        self._tasks: set[asyncio.Task[bool]] = set()
        self._closed = False
        self._fir_sequence = 0
        self.media_ssrc: int | None = None
        """The SSRC carrying the media payload type, learned from packets (not RTX)."""
        self.packets_received = 0
        self.keyframe_requests_sent = 0
        self.layer_ssrcs: dict[str, int] = {}
        """Simulcast: each rid's media SSRC, learned from the rid header extension."""
        self._layer_of_ssrc: dict[int, str] = {}
        self._layer_nacks: dict[int, Any] = {}
        self.sender_reports: dict[int, tuple[int, int]] = {}
        """Per media SSRC, its latest RTCP sender report: (NTP timestamp, RTP timestamp)."""

        original_receive = receiver.receive
        original_rtcp = receiver._handle_rtcp_packet

        async def handle_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                self.sender_reports[packet.ssrc] = (info.ntp_timestamp, info.rtp_timestamp)
            await original_rtcp(packet)

        setattr(receiver, "_handle_rtcp_packet", handle_rtcp)  # noqa: B010

        async def receive(parameters: Any) -> None:
            await original_receive(parameters)
            self._stop_decoder()

        setattr(receiver, "receive", receive)  # noqa: B010 - instance override on purpose
        setattr(receiver, "_handle_rtp_packet", self._handle_rtp_packet)  # noqa: B010
        self._stop_decoder()  # in case aiortc already started it

    @property
    def decoder_running(self) -> bool:
        """Whether aiortc's decoder thread exists for this receiver (it should never)."""
        return getattr(self._receiver, R_DECODER_THREAD) is not None

    def request_keyframe(self, *, fir: bool = False, rid: str | None = None) -> None:
        """Ask the publisher for a keyframe (PLI, or FIR) on the media SSRC, in the background.

        `rid` names a simulcast layer (its SSRC is targeted). Does nothing until a media
        packet told which SSRC to target. The task is owned here and cancelled by `close()`.
        """
        task = asyncio.ensure_future(self.send_keyframe_request(fir=fir, rid=rid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_keyframe_request(self, *, fir: bool = False, rid: str | None = None) -> bool:
        """Send a PLI (or FIR) for the media SSRC (of layer `rid`) now; False if it could
        not be sent."""
        media_ssrc = self.media_ssrc if rid is None else self.layer_ssrcs.get(rid)
        rtcp_ssrc = getattr(self._receiver, R_RTCP_SSRC)
        if media_ssrc is None or rtcp_ssrc is None:
            return False
        if fir:
            # RFC 5104: the target is in the FCI. The media SSRC field is set too (instead
            # of 0) so that aiortc publishers, which route feedback by it, see the FIR.
            self._fir_sequence = (self._fir_sequence + 1) & 0xFF
            packet = RtcpPsfbPacket(
                fmt=RTCP_PSFB_FIR,
                ssrc=rtcp_ssrc,
                media_ssrc=media_ssrc,
                fci=struct.pack("!LB3x", media_ssrc, self._fir_sequence),
            )
            await self._receiver._send_rtcp(packet)
        else:
            await self._receiver._send_rtcp_pli(media_ssrc)
        self.keyframe_requests_sent += 1
        return True

    def close(self) -> None:
        """Stop handing packets over and cancel pending keyframe requests. Idempotent.

        The peer connection stops the receiver itself; closing here first matters when
        the connection is being replaced, so no late packet of the old one is forwarded.
        """
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    def _stop_decoder(self) -> None:
        if getattr(self._receiver, R_DECODER_THREAD) is not None:
            getattr(self._receiver, R_STOP_DECODER)()

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        # Mirrors RTCRtpReceiver._handle_rtp_packet of aiortc 1.16.0 up to the point where
        # it depayloads: REMB, RTCP statistics, RTX unwrapping and NACKs are kept; the
        # depayloading, jitter buffer and decoder queue are replaced by `on_packet`.
        # Exceptions are contained: one escaping would end the DTLS transport's loop.
        if self._closed or not self._receiver._enabled:
            return
        try:
            await self._process(packet, arrival_time_ms)
        except Exception:
            logger.exception("forwarding a packet from %s failed", self._receiver)

    async def _process(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        receiver = self._receiver
        estimator = self._estimator
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            rtcp_ssrc = getattr(receiver, R_RTCP_SSRC)
            if rtcp_ssrc is not None and remb is not None:
                await receiver._send_rtcp(
                    RtcpPsfbPacket(
                        fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb)
                    )
                )

        codec = self._codecs.get(packet.payload_type)
        if codec is None:
            return
        stream = self._streams.get(packet.ssrc)
        if stream is None:
            stream = self._streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)

        rtx = is_rtx(codec)
        rid = packet.extensions.rtp_stream_id
        if rid is not None and not rtx and packet.ssrc not in self._layer_of_ssrc:
            self._layer_of_ssrc[packet.ssrc] = rid
            self.layer_ssrcs[rid] = packet.ssrc
        repaired = packet.extensions.repaired_rtp_stream_id
        if repaired is not None and rtx and packet.ssrc not in self._rtx_ssrc:
            layer_ssrc = self.layer_ssrcs.get(repaired)
            if layer_ssrc is not None:
                self._rtx_ssrc[packet.ssrc] = layer_ssrc
        if rtx:
            original_ssrc = self._rtx_ssrc.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if (
                original_ssrc is None
                or len(packet.payload) < 2  # padding probes
                or not isinstance(apt, int)
                or apt not in self._codecs
            ):
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        else:
            self.media_ssrc = packet.ssrc

        nack_generator = self._nack_generator
        rid = self._layer_of_ssrc.get(packet.ssrc)
        if rid is not None and nack_generator is not None:
            # One sequence space per layer: a generator per layer SSRC.
            nack_generator = self._layer_nacks.get(packet.ssrc)
            if nack_generator is None:
                nack_generator = self._layer_nacks[packet.ssrc] = type(self._nack_generator)()
        if nack_generator is not None and nack_generator.add(packet):
            await receiver._send_rtcp_nack(packet.ssrc, sorted(nack_generator.missing))

        self.packets_received += 1
        await self._on_packet(
            MediaPacket(
                sequence_number=packet.sequence_number,
                timestamp=packet.timestamp,
                marker=packet.marker,
                payload=packet.payload,
                ssrc=packet.ssrc,
                payload_type=packet.payload_type,
                audio_level=packet.extensions.audio_level,
                padding_size=packet.padding_size,
                red=codec.mimeType == "audio/red",
                rid=rid,
            )
        )


_fir_routed: weakref.WeakSet[Any] = weakref.WeakSet()

_DTLS_CONNECTED = aiortc.rtcdtlstransport.State.CONNECTED
_RTP_COMPONENT = 1
"""aiortc bundles RTP and RTCP on ICE component 1 (rtcp-mux), its only component."""


class _DirectPath:
    """A connected DTLS transport's way to the wire around aiortc, aioice and asyncio.

    What aiortc's `_send_rtp` does for RTP, aioice's `Connection.sendto` and asyncio's
    datagram transport after it, in two objects: the transport's outbound SRTP session
    (`SrtpProtector`) and the nominated candidate pair's UDP socket and remote address
    (`DatagramRoute`). Opened once ICE and DTLS have settled; `usable()` is checked for
    every packet: once DTLS leaves CONNECTED, or ICE nominates another pair or closes
    (consent expired: aioice clears its nominated pairs), the caller opens it again or
    goes back to aiortc's path, which finds the new pair or fails as it always did. ICE
    consent checks are aioice's own task and keep running on the same socket.

    Not used (aiortc's path is kept) when the pair relays through TURN (aioice wraps
    each datagram), or while someone replaced the transport's `_send_rtp` (a measurement
    tap). The DTLS transport's own byte and packet counters (transport-level stats) do
    not see the packets sent this way.
    """

    __slots__ = ("_dtls", "_dtls_attributes", "_nominated", "_pair", "protector", "route")

    def __init__(
        self, dtls: Any, nominated: dict[int, Any], pair: Any, route: DatagramRoute
    ) -> None:
        self._dtls = dtls
        self._dtls_attributes: dict[str, Any] = vars(dtls)
        self._nominated = nominated
        self._pair = pair
        self.protector = SrtpProtector(dtls._tx_srtp)
        self.route = route

    @classmethod
    def open(cls, dtls: Any) -> _DirectPath | None:
        """The direct path of DTLS transport `dtls`, or None when there is none (yet)."""
        if dtls is None or dtls._state != _DTLS_CONNECTED or "_send_rtp" in vars(dtls):
            return None
        if dtls._tx_srtp is None:
            return None
        connection = getattr(dtls.transport, "_connection", None)
        nominated: dict[int, Any] | None = getattr(connection, "_nominated", None)
        pair = nominated.get(_RTP_COMPONENT) if nominated is not None else None
        if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
            return None
        transport: Any = pair.protocol.transport
        sock = getattr(transport, "_sock", None)
        if sock is None or transport.is_closing() or transport.get_extra_info("peername"):
            return None
        route = DatagramRoute(
            sock,
            pair.remote_addr,
            queued=transport.get_write_buffer_size,
            fallback=transport.sendto,
        )
        assert nominated is not None
        return cls(dtls, nominated, pair, route)

    def bind(self, fast: fanout.FastLeg, sender: RTCRtpSender) -> None:
        """Point a leg's C fan-out at this path (it checks, per packet, what `usable`
        checks, plus `sender._enabled`, the socket and the transport's queue)."""
        session = self._dtls._tx_srtp
        protect, context = srtp_pointers(session)
        route = self.route
        fast.bind(
            session=session,
            protect=protect,
            context=context,
            sock=route.sock,
            address=route.address,
            queued=route.queued,
            fallback=route.fallback,
            nominated=self._nominated,
            component=_RTP_COMPONENT,
            pair=self._pair,
            dtls=self._dtls,
            connected=_DTLS_CONNECTED,
            sender=sender,
        )

    def usable(self) -> bool:
        """Whether the pair is still the nominated one, DTLS still connected and the
        transport's writer not tapped since."""
        return (
            self._nominated.get(_RTP_COMPONENT) is self._pair
            and self._dtls._state is _DTLS_CONNECTED
            and "_send_rtp" not in self._dtls_attributes
        )


def _route_fir_to_senders(transport: Any) -> None:
    """Make a DTLS transport deliver FIR to the sender named in its FCI.

    aiortc routes feedback by the packet's media SSRC field, which RFC 5104 sets to 0 for
    FIR; without this, a FIR from a subscriber would reach no sender.
    """
    router = transport._rtp_router
    if router in _fir_routed:
        return
    original = router.route_rtcp

    def route_rtcp(packet: Any) -> set[Any]:
        recipients: set[Any] = original(packet)
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_FIR:
            fci = packet.fci
            for pos in range(0, len(fci) - 7, 8):
                sender = router.senders.get(int.from_bytes(fci[pos : pos + 4], "big"))
                if sender is not None:
                    recipients.add(sender)
        return recipients

    router.route_rtcp = route_rtcp
    _fir_routed.add(router)


class OutboundStream:
    """A subscriber-side, track-less sender that sends the packets it is given, as they are.

    Attach it right after `addTransceiver(kind, direction="sendonly")`, before
    negotiation. `on_ready(stream)` runs once aiortc starts the sender (DTLS connected and
    the answer applied); `send` returns False before that.
    """

    def __init__(
        self,
        sender: RTCRtpSender,
        *,
        on_keyframe_request: Callable[[], object],
        on_ready: Callable[[OutboundStream], object] | None = None,
    ) -> None:
        if getattr(sender, S_STARTED):
            raise InvalidStateError("hooking a sender", "started")
        if sender.track is not None:
            raise InvalidStateError("hooking a sender with a track", "has a track")
        self._sender: RTCRtpSender = sender
        self._on_keyframe_request: Callable[[], object] = on_keyframe_request
        self._on_ready: Callable[[OutboundStream], object] | None = on_ready
        self._history: list[bytes | None] = [None] * RTP_HISTORY_SIZE
        """The RTP bytes (before SRTP) of the last sends, by sequence number modulo
        `RTP_HISTORY_SIZE`, for NACKs (aiortc's own history, of `RtpPacket`s, stays empty);
        the C fan-out writes into the same list."""
        self.fast: fanout.FastLeg | None = fanout.new_leg(self._history)
        """The leg's C fan-out (None without it): the router sends through it when it can;
        its counters add to this stream's."""
        self._rtx_sequence_number: int = random_sequence_number()
        self._extensions_map: Any = getattr(sender, S_HEADER_EXTENSIONS_MAP)
        self._ssrc: int = sender._ssrc
        self._transport: Any = None
        self._direct: _DirectPath | None = None
        self._last_sent_at: float = 0.0
        self._last_rtp_timestamp: int = 0
        self._payload_type: int = 0
        self._red_payload_type: int | None = None
        self._mid: str | None = None
        self._writer: RtpWriter | None = None
        self.rtx_payload_type: int | None = None
        self.ready: bool = False
        self._packets_sent: int = 0
        self._octets_sent: int = 0
        self._packets_refused: int = 0
        self.keyframe_requests_received: int = 0
        self.retransmit_requests: int = 0
        """Sequence numbers the subscriber NACKed."""
        self.retransmissions: int = 0
        """NACKed packets found in the history and sent again (as RTX when negotiated)."""
        self.red_sent: int = 0
        """RED packets sent as RED (the subscriber negotiated it)."""
        self.red_unwrapped: int = 0
        """RED packets sent as their primary Opus block (the subscriber has no RED)."""
        self._drop: Callable[[int], bool] | None = None
        self.packets_dropped: int = 0
        self.on_feedback: Callable[[float | None, int | None], object] | None = None
        """Called with (loss fraction, None) for each receiver report on this leg and
        (None, bits per second) for each REMB naming it: the leg's link estimate input."""

        original_send = sender.send
        original_rtcp = sender._handle_rtcp_packet
        original_stats = sender.getStats

        async def handle_rtcp(packet: Any) -> None:
            if self.on_feedback is not None:
                self._feedback(packet)
            await original_rtcp(packet)

        async def send(parameters: Any) -> None:
            await original_send(parameters)
            self._start(parameters)

        async def get_stats() -> Any:
            self._sync_sender_report()
            return await original_stats()

        def run_rtcp() -> Awaitable[None]:
            # aiortc's RTCP loop reads the sender-report fields right after each sleep:
            # they are copied in just before it resumes, not on every packet.
            return resuming(RTCRtpSender._run_rtcp(sender), self._sync_sender_report)

        setattr(sender, "send", send)  # noqa: B010 - instance overrides on purpose
        setattr(sender, "getStats", get_stats)  # noqa: B010
        setattr(sender, "_run_rtcp", run_rtcp)  # noqa: B010
        setattr(sender, "_retransmit", self._retransmit)  # noqa: B010
        setattr(sender, "_handle_rtcp_packet", handle_rtcp)  # noqa: B010
        setattr(sender, "_run_rtp", self._idle_rtp)  # noqa: B010
        setattr(sender, "_send_keyframe", self._keyframe_requested)  # noqa: B010

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def packets_sent(self) -> int:
        fast = self.fast
        return self._packets_sent + (fast.packets_sent if fast is not None else 0)

    @property
    def octets_sent(self) -> int:
        """Payload bytes sent (as RTCP sender reports count them)."""
        fast = self.fast
        return self._octets_sent + (fast.octets_sent if fast is not None else 0)

    @property
    def packets_refused(self) -> int:
        """Packets the leg's SRTP session refused (replays: a duplicate from upstream)."""
        fast = self.fast
        return self._packets_refused + (fast.packets_refused if fast is not None else 0)

    @property
    def drop(self) -> Callable[[int], bool] | None:
        """Loss injection: `drop(sequence_number)` True keeps a packet in the history but
        does not send it (tests and fault drills only; the leg leaves the C fan-out)."""
        return self._drop

    @drop.setter
    def drop(self, drop: Callable[[int], bool] | None) -> None:
        self._drop = drop
        if self.fast is not None:
            self.fast.diverted = drop is not None

    @property
    def direct(self) -> bool:
        """Whether the leg's packets go straight to the socket (`_DirectPath`) now."""
        return self._direct is not None and self._direct.usable()

    @property
    def payload_type(self) -> int | None:
        """The leg's negotiated payload type (None until ready)."""
        return self._payload_type if self.ready else None

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        """Send `packet` on this leg as `sequence_number`; False if it could not be sent."""
        if not self.ready or not self._sender._enabled:
            return False
        payload_type = self._payload_type
        if packet.red:
            packet, payload_type = self._red_for_leg(packet)
            if not packet.payload:
                return False
        now = time.time()
        abs_send_time = int(now * _ABS_SEND_TIME_UNITS) & 0xFFFFFF
        writer = self._writer
        if writer is not None:
            data = writer.serialize(packet, sequence_number, abs_send_time, payload_type)
        else:
            data = self._serialize_with_aiortc(packet, sequence_number, abs_send_time, payload_type)
        self._history[sequence_number % RTP_HISTORY_SIZE] = data
        drop = self._drop
        if drop is not None and drop(sequence_number):
            self.packets_dropped += 1
            return True
        direct = self._direct
        if direct is None or not direct.usable():
            direct = self._direct = _DirectPath.open(self._transport)
            if direct is not None and self.fast is not None:
                direct.bind(self.fast, self._sender)
        try:
            if direct is not None:
                if not direct.route.send(direct.protector.protect(data)):
                    return False
            else:
                await self._transport._send_rtp(data)
        except ConnectionError:
            return False
        except pylibsrtp.Error:  # e.g. a duplicate: SRTP refuses to reuse an index
            self._packets_refused += 1
            return False
        self._packets_sent += 1
        self._octets_sent += len(packet.payload)
        self._last_sent_at = now
        self._last_rtp_timestamp = packet.timestamp
        return True

    def _serialize_with_aiortc(
        self, packet: MediaPacket, sequence_number: int, abs_send_time: int, payload_type: int
    ) -> bytes:
        """aiortc's serialization, for header extension ids `RtpWriter` cannot write."""
        out = RtpPacket(
            payload_type=payload_type,
            marker=packet.marker,
            sequence_number=sequence_number,
            timestamp=packet.timestamp,
            ssrc=self._ssrc,
            payload=packet.payload,
        )
        out.extensions.mid = self._mid
        out.extensions.abs_send_time = abs_send_time
        out.extensions.audio_level = packet.audio_level
        data: bytes = out.serialize(self._extensions_map)
        return data

    async def _retransmit(self, sequence_number: int) -> None:
        # Replaces RTCRtpSender._retransmit (same behaviour) on the history of bytes.
        self.retransmit_requests += 1
        data = self._history[sequence_number % RTP_HISTORY_SIZE]
        if data is None or int.from_bytes(data[2:4], "big") != sequence_number:
            return
        self.retransmissions += 1
        if self.rtx_payload_type is not None:
            packet = wrap_rtx(
                RtpPacket.parse(data, self._extensions_map),
                payload_type=self.rtx_payload_type,
                sequence_number=self._rtx_sequence_number,
                ssrc=self._sender._rtx_ssrc,
            )
            self._rtx_sequence_number = uint16_add(self._rtx_sequence_number, 1)
            data = packet.serialize(self._extensions_map)
        direct = self._direct
        if direct is not None and direct.usable():
            with contextlib.suppress(pylibsrtp.Error):
                direct.route.send(direct.protector.protect(data))
            return
        await self._transport._send_rtp(data)

    def _sync_sender_report(self) -> None:
        """Copy the last send's wall time, RTP timestamp and the counts into the fields
        aiortc's sender reports (and `getStats`) read."""
        packets_sent = self.packets_sent
        if not packets_sent:
            return
        now, rtp_timestamp = self._last_sent_at, self._last_rtp_timestamp
        fast = self.fast
        if fast is not None and fast.last_sent_at > now:
            now, rtp_timestamp = fast.last_sent_at, fast.last_rtp_timestamp
        seconds = int(now)
        sender = self._sender
        setattr(
            sender,
            S_NTP_TIMESTAMP,
            ((seconds + _NTP_EPOCH_OFFSET) << 32) | int((now - seconds) * 4294967296.0),
        )
        setattr(sender, S_RTP_TIMESTAMP, rtp_timestamp)
        setattr(sender, S_PACKET_COUNT, packets_sent)
        setattr(sender, S_OCTET_COUNT, self.octets_sent)

    def _feedback(self, packet: Any) -> None:
        on_feedback = self.on_feedback
        assert on_feedback is not None
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == self._ssrc:
                    on_feedback(report.fraction_lost / 256, None)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if self._ssrc in ssrcs:
                on_feedback(None, bitrate)

    def _red_for_leg(self, packet: MediaPacket) -> tuple[MediaPacket, int]:
        """A RED packet as this leg takes it: RED with the leg's Opus payload type in its
        blocks, or its primary block alone (an empty payload when it is malformed)."""
        red_payload_type = self._red_payload_type
        if red_payload_type is not None:
            payload = red_retyped(packet.payload, self._payload_type)
            self.red_sent += payload is not None
            return dataclasses.replace(packet, payload=payload or b"", red=False), red_payload_type
        payload = red_primary(packet.payload)
        self.red_unwrapped += payload is not None
        return dataclasses.replace(packet, payload=payload or b"", red=False), self._payload_type

    def _start(self, parameters: Any) -> None:
        media = [c for c in parameters.codecs if c.mimeType.lower() != "audio/red"]
        red = [c for c in parameters.codecs if c.mimeType.lower() == "audio/red"]
        self._payload_type = (media or parameters.codecs)[0].payloadType
        self._red_payload_type = red[0].payloadType if red else None
        self._mid = parameters.muxId
        ids = {ext.uri: ext.id for ext in parameters.headerExtensions}
        writer = RtpWriter(
            payload_type=self._payload_type,
            ssrc=self._ssrc,
            mid=self._mid,
            mid_id=ids.get(_MID_URI),
            abs_send_time_id=ids.get(_ABS_SEND_TIME_URI),
            audio_level_id=ids.get(_AUDIO_LEVEL_URI),
        )
        self._writer = writer if writer.usable else None
        if self.fast is not None and writer.usable:
            mid_element, abs_send_time_id, audio_level_id = writer.extension_layout
            self.fast.configure(
                payload_type=self._payload_type,
                ssrc=self._ssrc,
                mid_element=mid_element,
                abs_send_time_id=abs_send_time_id,
                audio_level_id=audio_level_id,
            )
        self.rtx_payload_type = getattr(self._sender, S_RTX_PAYLOAD_TYPE)
        self._transport = self._sender.transport
        _route_fir_to_senders(self._transport)
        self.ready = True
        if self._on_ready is not None:
            self._on_ready(self)

    def _keyframe_requested(self) -> None:
        # Replaces RTCRtpSender._send_keyframe, which aiortc calls for PLI and FIR.
        self.keyframe_requests_received += 1
        self._on_keyframe_request()

    async def _idle_rtp(self, codec: object) -> None:
        # Replaces RTCRtpSender._run_rtp: no track, no encoder; only the events its stop()
        # waits for.
        getattr(self._sender, S_RTP_STARTED).set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        finally:
            getattr(self._sender, S_RTP_EXITED).set()
