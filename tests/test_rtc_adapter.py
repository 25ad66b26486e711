"""The aiortc adapter: fails loudly when the aiortc internals it relies on move.

Three layers: the pinned version is enforced at import; every private name the adapter
uses exists with the expected shape (and the aiortc methods it mirrors or replaces still
have the source it was written against); and each hook is exercised once between real
aiortc peers on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import inspect
import re
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioice.ice
import aiortc
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTP_HISTORY_SIZE,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
)

import rtc.aiortc_adapter as adapter
from rtc.aiortc_adapter import InboundStream, OutboundStream
from rtc.errors import InvalidStateError, UnsupportedAiortc
from rtc.packets import MediaPacket, RtpWriter

WAIT = 10.0

# sha256 (first 16 hex digits) of the aiortc 1.16.0 methods the adapter mirrors or replaces:
# if one changes, re-read it and port the adapter before updating the fingerprint.
FINGERPRINTS: dict[Callable[..., Any], str] = {
    RTCRtpReceiver._handle_rtp_packet: "4e54983d021a6336",  # mirrored by InboundStream
    RTCRtpReceiver.receive: "d6d8d8d7a0bf4e95",  # starts the decoder we stop
    RTCRtpSender._run_rtp: "ff597a1d554cb373",  # replaced by an idle loop
    RTCRtpSender.send: "3969482b77a2a65f",  # calls _run_rtp, sets rtx payload type
    RTCRtpSender.stop: "38c1e92baf8e2997",  # waits for the rtp started/exited events
    RTCRtpSender._handle_rtcp_packet: "a4ee4c7355f8de7a",  # NACK -> _retransmit, PLI/FIR
    RTCRtpSender._retransmit: "ae0b2491944b52dc",  # replaced: NACKs from our history
    RTCRtpSender._run_rtcp: "51e0a924eac4e39b",  # reads the SR fields after each sleep
    RTCRtpSender.getStats: "5da0142919c095e3",  # reads the packet and octet counts
    RTCDtlsTransport._send_rtp: "763b02bceb0b0ab9",  # what _DirectPath does for RTP
    aioice.ice.Connection.sendto: "bf162ec03bdce2cc",  # the nominated pair's protocol
    aioice.ice.StunProtocol.send_data: "8bfbce074a897482",  # its transport's sendto
}


async def eventually(check: Callable[[], Any], *, what: str, timeout: float = WAIT) -> Any:
    """Poll `check` until truthy; fail with what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        await asyncio.sleep(0.02)


def peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


# -- the pinned version ------------------------------------------------------------------


def test_the_adapter_refuses_another_aiortc_version(monkeypatch: pytest.MonkeyPatch) -> None:
    assert aiortc.__version__ == adapter.AIORTC_VERSION == "1.16.0"
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    spec = importlib.util.spec_from_file_location("adapter_probe", adapter.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(UnsupportedAiortc) as raised:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert raised.value.found == "1.17.0" and raised.value.expected == "1.16.0"


# -- the private names -------------------------------------------------------------------


def _parameters(method: Any) -> list[str]:
    return [p for p in inspect.signature(method).parameters if p != "self"]


async def test_every_private_name_the_adapter_uses_exists() -> None:
    pc = peer()
    try:
        video = pc.addTransceiver("video", direction="sendonly")
        audio = pc.addTransceiver("audio", direction="sendonly")
        for transceiver in (video, audio):
            receiver, sender = transceiver.receiver, transceiver.sender
            for name in adapter.PRIVATE_RECEIVER_ATTRIBUTES + adapter.PRIVATE_RECEIVER_METHODS:
                assert hasattr(receiver, name), f"RTCRtpReceiver lost {name}"
            for name in adapter.PRIVATE_SENDER_ATTRIBUTES + adapter.PRIVATE_SENDER_METHODS:
                assert hasattr(sender, name), f"RTCRtpSender lost {name}"
            for name in adapter.PRIVATE_TRANSCEIVER_ATTRIBUTES:
                assert hasattr(transceiver, name), f"RTCRtpTransceiver lost {name}"
            for name in adapter.PRIVATE_TRANSPORT_NAMES:
                assert hasattr(sender.transport, name), f"RTCDtlsTransport lost {name}"

            for name in (adapter.R_CODECS, adapter.R_RTX_SSRC, adapter.R_REMOTE_STREAMS):
                assert isinstance(getattr(receiver, name), dict), name
            assert getattr(receiver, adapter.R_DECODER_THREAD) is None  # until receive()
            assert isinstance(getattr(receiver, adapter.R_RTCP_SSRC), int)
            assert isinstance(getattr(sender, adapter.S_RTP_STARTED), asyncio.Event)
            assert isinstance(getattr(sender, adapter.S_RTP_EXITED), asyncio.Event)
            assert getattr(sender, adapter.S_STARTED) is False
            assert getattr(sender, adapter.S_RTX_PAYLOAD_TYPE) is None
            for name in (adapter.S_NTP_TIMESTAMP, adapter.S_RTP_TIMESTAMP):
                assert getattr(sender, name) == 0, name
            for name in (adapter.S_OCTET_COUNT, adapter.S_PACKET_COUNT):
                assert getattr(sender, name) == 0, name
            extensions_map = getattr(sender, adapter.S_HEADER_EXTENSIONS_MAP)
            assert callable(extensions_map.set) and callable(extensions_map.configure)
            assert isinstance(sender._ssrc, int) and isinstance(sender._rtx_ssrc, int)
            assert isinstance(transceiver._codecs, list)
            router = sender.transport._rtp_router
            assert callable(router.route_rtcp) and isinstance(router.senders, dict)

        nack = getattr(video.receiver, adapter.R_NACK_GENERATOR)
        assert callable(nack.add) and isinstance(nack.missing, set)
        assert callable(getattr(video.receiver, adapter.R_BITRATE_ESTIMATOR).add)
        assert getattr(audio.receiver, adapter.R_NACK_GENERATOR) is None
        assert getattr(audio.receiver, adapter.R_BITRATE_ESTIMATOR) is None

        receiver, sender = video.receiver, video.sender
        assert _parameters(receiver._handle_rtp_packet) == ["packet", "arrival_time_ms"]
        assert _parameters(receiver._send_rtcp) == ["packet"]
        assert _parameters(receiver._send_rtcp_nack) == ["media_ssrc", "lost"]
        assert _parameters(receiver._send_rtcp_pli) == ["media_ssrc"]
        assert _parameters(getattr(receiver, adapter.R_STOP_DECODER)) == []
        assert _parameters(sender._run_rtp) == ["codec"]
        assert _parameters(sender._run_rtcp) == []
        assert _parameters(sender._send_keyframe) == []
        assert _parameters(sender._retransmit) == ["sequence_number"]
        assert _parameters(sender.transport._send_rtp) == ["data"]
        assert _parameters(sender.transport._rtp_router.route_rtcp) == ["packet"]
    finally:
        await pc.close()


def test_replaced_module_names_exist() -> None:
    for module, name in adapter.PRIVATE_MODULE_NAMES:
        assert isinstance(getattr(module, name), dict), f"{module.__name__} lost {name}"


def _offered_video(sdp: str) -> list[str]:
    return re.findall(r"a=rtpmap:\d+ (\w+)/90000", sdp)


async def test_pass_through_codecs_only_inside_their_context() -> None:
    """VP9 and AV1 are negotiated by forwarder code only: an SDK peer in the same process
    (outside the context) never offers a codec aiortc cannot decode."""
    plain, forwarding = peer(), peer()
    try:
        plain.addTransceiver("video", direction="sendonly")
        await plain.setLocalDescription(await plain.createOffer())
        assert "VP9" not in _offered_video(plain.localDescription.sdp)
        transceiver = forwarding.addTransceiver("video", direction="sendonly")
        vp9 = [c for c in adapter.codec_capabilities("video") if c.mimeType == "video/VP9"]
        rtx = [c for c in adapter.codec_capabilities("video") if c.mimeType == "video/rtx"]
        adapter.prefer_codecs(transceiver, vp9 + rtx)
        with adapter.pass_through_codecs():
            await forwarding.setLocalDescription(await forwarding.createOffer())
        assert _offered_video(forwarding.localDescription.sdp) == ["VP9", "rtx"]
        assert "profile-id=0" in forwarding.localDescription.sdp
        # the context is over: this task's next offer is aiortc's own again
        again = peer()
        again.addTransceiver("video", direction="sendonly")
        await again.setLocalDescription(await again.createOffer())
        assert "VP9" not in _offered_video(again.localDescription.sdp)
        await again.close()
    finally:
        await plain.close()
        await forwarding.close()


async def test_rid_header_extensions_only_inside_the_pass_through_context() -> None:
    """The simulcast rid extensions are negotiated on forwarder connections only."""
    plain, forwarding = peer(), peer()
    try:
        plain.addTransceiver("video", direction="sendonly")
        await plain.setLocalDescription(await plain.createOffer())
        assert adapter.RID_URI not in plain.localDescription.sdp
        forwarding.addTransceiver("video", direction="sendonly")
        with adapter.pass_through_codecs():
            await forwarding.setLocalDescription(await forwarding.createOffer())
        sdp = forwarding.localDescription.sdp
        assert f"a=extmap:10 {adapter.RID_URI}" in sdp
        assert f"a=extmap:11 {adapter.REPAIRED_RID_URI}" in sdp
    finally:
        await plain.close()
        await forwarding.close()


def test_the_aiortc_methods_the_adapter_mirrors_are_unchanged() -> None:
    for method, expected in FINGERPRINTS.items():
        digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
        assert digest == expected, f"{method.__qualname__} changed: re-read it, port the adapter"


@pytest.mark.parametrize(
    ("mid", "ids", "audio_level"),
    [
        ("0", {"mid": 1, "abs": 3}, None),  # aiortc's video extensions
        ("1", {"mid": 1, "level": 2}, (True, 42)),  # aiortc's audio extensions
        ("12", {"mid": 4, "abs": 14, "level": 9}, (False, 127)),  # a browser's ids
        ("0", {}, None),  # nothing negotiated: no extension block
    ],
)
def test_the_fast_writer_makes_the_bytes_aiortc_makes(
    mid: str, ids: dict[str, int], audio_level: tuple[bool, int] | None
) -> None:
    uris = {
        "mid": "urn:ietf:params:rtp-hdrext:sdes:mid",
        "abs": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "level": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    }
    extensions_map = HeaderExtensionsMap()
    extensions_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uris[k]) for k, i in ids.items()
            ]
        )
    )
    writer = RtpWriter(
        payload_type=111,
        ssrc=0xDEADBEEF,
        mid=mid,
        mid_id=ids.get("mid"),
        abs_send_time_id=ids.get("abs"),
        audio_level_id=ids.get("level"),
    )
    assert writer.usable
    for marker, seq, ts, abs_send_time in ((1, 65535, 2**32 - 1, 0xABCDEF), (0, 7, 0, 0)):
        packet = MediaPacket(
            sequence_number=1,
            timestamp=ts,
            marker=marker,
            payload=b"payload" * 9,
            ssrc=1,
            payload_type=96,
            audio_level=audio_level,
        )
        reference = RtpPacket(
            payload_type=111, marker=marker, sequence_number=seq, timestamp=ts, ssrc=0xDEADBEEF
        )
        reference.payload = packet.payload
        reference.extensions.mid = mid
        reference.extensions.abs_send_time = abs_send_time
        reference.extensions.audio_level = audio_level
        expected = reference.serialize(extensions_map)
        assert writer.serialize(packet, seq, abs_send_time) == expected


def test_the_fast_writer_steps_aside_for_two_byte_extensions() -> None:
    writer = RtpWriter(
        payload_type=96, ssrc=1, mid="0", mid_id=15, abs_send_time_id=None, audio_level_id=None
    )
    assert not writer.usable


# -- each hook, once, between real peers -------------------------------------------------


def renumber_vp8(offer_sdp: str, vp8: int = 120, rtx: int = 121) -> str:
    """The offer with VP8/RTX on other payload types than aiortc's 97/98 (as a browser)."""
    out = []
    for line in offer_sdp.splitlines():
        if line.startswith(("m=video", "a=rtpmap:", "a=rtcp-fb:", "a=fmtp:")):
            line = re.sub(r"\b97\b", str(vp8), line)
            line = re.sub(r"\b98\b", str(rtx), line)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def test_each_hook_between_real_peers() -> None:
    """publisher -> [ingress: InboundStream] -> [egress: OutboundStream] -> subscriber."""
    publisher, ingress, egress, subscriber = peer(), peer(), peer(), peer()
    try:
        # egress -> subscriber first, so the publisher's first keyframe is relayed
        leg = egress.addTransceiver("video", direction="sendonly")
        keyframe_requests: list[int] = []
        outbound = OutboundStream(
            leg.sender, on_keyframe_request=lambda: keyframe_requests.append(1)
        )
        subscriber_tracks: list[Any] = []
        subscriber.on("track", subscriber_tracks.append)
        await negotiate(egress, subscriber)
        (sub_transceiver,) = subscriber.getTransceivers()
        sub_receiver = sub_transceiver.receiver
        seen: list[tuple[int, int, str | None]] = []
        original_handler = sub_receiver._handle_rtp_packet

        async def spy(packet: Any, arrival_time_ms: int) -> None:
            seen.append((packet.payload_type, packet.ssrc, packet.extensions.mid))
            await original_handler(packet, arrival_time_ms=arrival_time_ms)

        setattr(sub_receiver, "_handle_rtp_packet", spy)  # noqa: B010
        await eventually(lambda: outbound.ready, what="the egress sender to start")

        # publisher -> ingress, VP8 on payload type 120 and its video on MID "1"
        publisher.addTransceiver("audio", direction="inactive")
        pub_sender = publisher.addTrack(VideoStreamTrack())
        for t in publisher.getTransceivers():
            if t.kind == "video":
                caps = RTCRtpSender.getCapabilities("video").codecs
                t.setCodecPreferences([c for c in caps if c.name in ("VP8", "rtx")])
        await publisher.setLocalDescription(await publisher.createOffer())
        await ingress.setRemoteDescription(
            RTCSessionDescription(renumber_vp8(publisher.localDescription.sdp), "offer")
        )
        (ingress_video,) = [t for t in ingress.getTransceivers() if t.kind == "video"]
        relayed: list[MediaPacket] = []

        async def relay(packet: MediaPacket) -> None:
            relayed.append(packet)
            await outbound.send(packet, packet.sequence_number)

        inbound = InboundStream(ingress_video.receiver, relay)
        await ingress.setLocalDescription(await ingress.createAnswer())
        await publisher.setRemoteDescription(ingress.localDescription)

        # packets in: RTP handed over, no decoder, media SSRC learned (not the RTX one)
        await eventually(lambda: len(relayed) > 10, what="packets from the publisher")
        assert not inbound.decoder_running
        assert inbound.media_ssrc == pub_sender._ssrc != pub_sender._rtx_ssrc
        assert {p.payload_type for p in relayed} == {120}

        # packets out: the subscriber decodes, and sees the leg's PT, SSRC and MID
        (track,) = subscriber_tracks
        frame = await asyncio.wait_for(track.recv(), WAIT)
        assert (frame.width, frame.height) == (640, 480)
        assert outbound.payload_type == 97
        assert (97, outbound.ssrc, sub_transceiver.mid) in seen
        assert sub_transceiver.mid == "0" and ingress_video.mid == "1"

        # the sender reports carry the counts and timestamps of the leg's own sends
        async def reported() -> int:
            report = await sub_receiver.getStats()
            counts = [s.packetsSent for s in report.values() if s.type == "remote-outbound-rtp"]
            return counts[0] if counts else 0

        for _ in range(int(WAIT / 0.1)):
            if await reported() > 0:
                break
            await asyncio.sleep(0.1)
        assert 0 < await reported() <= outbound.packets_sent

        stats = await leg.sender.getStats()
        sent = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert sent and sent[0].packetsSent == outbound.packets_sent > 0
        assert outbound.direct  # ICE and DTLS settled: straight to the socket

        # a subscriber's NACK is answered with RTX from the history we filled
        lost = relayed[-1].sequence_number
        await sub_receiver._send_rtcp_nack(outbound.ssrc, [lost])
        rtx = (outbound.rtx_payload_type, leg.sender._rtx_ssrc, sub_transceiver.mid)
        assert outbound.rtx_payload_type == 98
        await eventually(lambda: rtx in seen, what="an RTX retransmission")

        # a subscriber's PLI, then FIR (media SSRC 0, target in the FCI), reach the hook
        await sub_receiver._send_rtcp_pli(outbound.ssrc)
        await eventually(lambda: len(keyframe_requests) == 1, what="the PLI")
        fir = RtcpPsfbPacket(
            fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=0, fci=struct.pack("!LB3x", outbound.ssrc, 1)
        )
        await sub_receiver._send_rtcp(fir)
        await eventually(lambda: len(keyframe_requests) == 2, what="the FIR")

        # the subscriber's receiver reports (loss) and REMB reach the leg's feedback hook
        feedback: list[tuple[float | None, int | None]] = []
        outbound.on_feedback = lambda loss, remb: feedback.append((loss, remb))
        await sub_receiver._send_rtcp(
            RtcpPsfbPacket(
                fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(777_000, [outbound.ssrc])
            )
        )
        await eventually(lambda: (None, 777_000) in feedback, what="the REMB")
        await eventually(
            lambda: any(loss is not None for loss, _ in feedback), what="a receiver report"
        )

        # upstream PLI and FIR reach the publisher's sender (so they target its media SSRC)
        asked: list[int] = []
        original_keyframe = pub_sender._send_keyframe

        def keyframe_spy() -> None:
            asked.append(1)
            original_keyframe()

        setattr(pub_sender, "_send_keyframe", keyframe_spy)  # noqa: B010
        assert await inbound.send_keyframe_request()
        await eventually(lambda: len(asked) == 1, what="the upstream PLI")
        inbound.request_keyframe(fir=True)
        await eventually(lambda: len(asked) == 2, what="the upstream FIR")
        assert inbound.keyframe_requests_sent == 2

        # receiver reports still flow to the publisher (RTCP statistics were kept)
        async def remote_inbound() -> bool:
            report = await pub_sender.getStats()
            return any(s.type == "remote-inbound-rtp" for s in report.values())

        for _ in range(int(WAIT / 0.1)):
            if await remote_inbound():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no receiver report reached the publisher")
        inbound.close()
    finally:
        for pc in (publisher, ingress, egress, subscriber):
            await asyncio.wait_for(pc.close(), WAIT)
    assert leg.sender.track is None  # no encoder could ever have run


async def test_a_sender_with_a_track_cannot_be_hooked() -> None:
    pc = peer()
    try:
        transceiver = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        with pytest.raises(InvalidStateError):
            OutboundStream(transceiver.sender, on_keyframe_request=lambda: None)
    finally:
        await pc.close()


def test_loopback_candidates_only_where_nothing_else_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = getattr(aioice.ice, adapter.AIOICE_HOST_ADDRESSES)
    assert _parameters(original) == ["use_ipv4", "use_ipv6"], "aioice's gathering moved"
    found: list[str] = []
    monkeypatch.setattr(aioice.ice, adapter.AIOICE_HOST_ADDRESSES, lambda v4, v6: list(found))
    adapter.allow_loopback_candidates()
    adapter.allow_loopback_candidates()  # idempotent: wrapped once
    gather = getattr(aioice.ice, adapter.AIOICE_HOST_ADDRESSES)
    assert gather(True, False) == ["127.0.0.1"]  # a loopback-only namespace
    assert gather(False, True) == []
    found.append("fe80::1")
    assert gather(True, True) == ["fe80::1", "127.0.0.1"]
    found.append("10.1.2.3")
    assert gather(True, True) == ["fe80::1", "10.1.2.3"]  # a real interface: as before


def test_the_sdk_imports_and_builds_a_room_without_the_pinned_aiortc() -> None:
    """Signaling alone must not need the adapter's aiortc pin: the SDK imports it lazily."""
    probe = (
        "import sys, aiortc\n"
        "aiortc.__version__ = '1.17.0'\n"
        "import stagecast\n"
        "room = stagecast.Room('ws://127.0.0.1:9/rtc', 'token')\n"
        "assert 'rtc.aiortc_adapter' not in sys.modules, 'the adapter was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


async def test_an_answer_as_dtls_server_makes_aiortc_the_dtls_server() -> None:
    offerer = aiortc.RTCPeerConnection()
    answerer = aiortc.RTCPeerConnection()
    try:
        offerer.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await adapter.answer_as_dtls_server(answerer)
        assert "a=setup:passive" in answerer.localDescription.sdp
        assert "a=setup:active" not in answerer.localDescription.sdp
        transport = answerer.getTransceivers()[0].receiver.transport
        assert transport._role == "server"  # aiortc took the role from the description
        await offerer.setRemoteDescription(answerer.localDescription)
        await asyncio.wait_for(_connected(answerer), 10)
    finally:
        await offerer.close()
        await answerer.close()


async def _connected(pc: aiortc.RTCPeerConnection) -> None:
    while pc.connectionState != "connected":
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def one_leg() -> AsyncIterator[tuple[Any, OutboundStream, list[Any]]]:
    """An egress leg (its transceiver and `OutboundStream`), ready, to a subscriber whose
    receiver records every RTP packet it gets (after SRTP, before RTX unwrapping)."""
    egress, subscriber = peer(), peer()
    try:
        leg = egress.addTransceiver("video", direction="sendonly")
        outbound = OutboundStream(leg.sender, on_keyframe_request=lambda: None)
        await negotiate(egress, subscriber)
        (sub_transceiver,) = subscriber.getTransceivers()
        arrived: list[Any] = []

        async def record(packet: Any, arrival_time_ms: int) -> None:
            arrived.append(packet)

        adapter.tap_receiver_packets(sub_transceiver.receiver, record)
        await eventually(lambda: outbound.ready, what="the egress sender to start")
        yield leg, outbound, arrived
    finally:
        await egress.close()
        await subscriber.close()


async def test_a_leg_leaves_the_direct_path_when_ice_moves_or_closes() -> None:
    """The direct path follows ICE: a newly nominated pair is picked up at the next send,
    a closed connection (consent expired: no nominated pair) fails the send as aiortc's
    own path does, and a tapped `_send_rtp` (the media benchmark's stamps) is honoured."""
    async with one_leg() as (leg, outbound, received):

        def arrived() -> list[int]:
            return [p.sequence_number for p in received]

        packet = MediaPacket(
            sequence_number=1, timestamp=0, marker=1, payload=b"\x10" * 50, ssrc=1, payload_type=96
        )
        assert await outbound.send(packet, 100)
        assert outbound.direct
        await eventually(lambda: 100 in arrived(), what="the first packet")

        # the private names the direct path reads, on connected objects
        ice = leg.sender.transport.transport
        for name in adapter.PRIVATE_ICE_NAMES:
            assert hasattr(ice, name), f"RTCIceTransport lost {name}"
        connection = ice._connection
        for name in adapter.PRIVATE_AIOICE_NAMES:
            assert isinstance(getattr(connection, name), dict), f"aioice Connection lost {name}"
        for name in adapter.PRIVATE_ASYNCIO_NAMES:
            sock = getattr(connection._nominated[1].protocol.transport, name)
            assert isinstance(sock, socket.socket), f"asyncio's transport lost {name}"

        # ICE nominates another pair (same sockets here): the next send takes it
        nominated = connection._nominated
        old_pair = nominated[1]
        new_pair = aioice.ice.CandidatePair(old_pair.protocol, old_pair.remote_candidate)
        nominated[1] = new_pair
        assert not outbound.direct
        assert await outbound.send(packet, 101)
        assert outbound.direct and outbound._direct is not None
        assert outbound._direct._pair is new_pair
        await eventually(lambda: 101 in arrived(), what="a packet on the new pair")

        # a tap on the transport's writer sees every packet: no direct path around it
        tapped: list[bytes] = []
        write = adapter.tap_transport_sends(
            leg.sender.transport, lambda data: _tap(tapped, write, data)
        )
        assert await outbound.send(packet, 102)
        assert not outbound.direct and len(tapped) == 1
        await eventually(lambda: 102 in arrived(), what="a tapped packet")

        # no nominated pair (aioice closing after consent expired): the send fails
        nominated.clear()
        assert await outbound.send(packet, 103) is False
        assert not outbound.direct


async def _tap(seen: list[bytes], write: Callable[[bytes], Any], data: bytes) -> None:
    seen.append(data)
    await write(data)


async def test_nacks_are_answered_from_the_history_of_bytes() -> None:
    """A NACKed packet goes out again from the leg's history: as RTX (its original sequence
    number first in the payload) when negotiated, as the same packet otherwise; a sequence
    number the history does not hold (any more) is counted and not answered."""
    async with one_leg() as (leg, outbound, arrived):
        payload = b"\x10\x00" + bytes(range(40))
        packet = MediaPacket(
            sequence_number=1, timestamp=0, marker=1, payload=payload, ssrc=1, payload_type=96
        )
        for seq in (500, 501):
            assert await outbound.send(packet, seq)
        media = outbound.payload_type
        await eventually(lambda: len(arrived) == 2, what="the two packets")

        rtx = outbound.rtx_payload_type
        assert rtx is not None
        await leg.sender._retransmit(500)
        await eventually(lambda: len(arrived) == 3, what="the RTX retransmission")
        assert arrived[2].payload_type == rtx
        assert arrived[2].payload == (500).to_bytes(2, "big") + payload

        # without RTX the same packet goes again (a subscriber's SRTP replay check drops
        # such a repeat, as with aiortc's own sender: seen here on the wire, before SRTP)
        outbound.rtx_payload_type = None
        wire: list[bytes] = []
        write = adapter.tap_transport_sends(
            leg.sender.transport, lambda data: _tap(wire, write, data)
        )
        await leg.sender._retransmit(501)
        (again,) = [RtpPacket.parse(data) for data in wire if data[1] & 0x7F == media]
        assert (again.sequence_number, again.payload, again.ssrc) == (501, payload, outbound.ssrc)

        await leg.sender._retransmit(501 + RTP_HISTORY_SIZE)  # same slot, another packet
        await leg.sender._retransmit(9)  # never sent
        assert outbound.retransmit_requests == 4 and outbound.retransmissions == 2
