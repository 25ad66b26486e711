"""SDP and codec negotiation for the forwarder's peer connections: pure choices, no state.

Subscribers get a publisher's packets unchanged, so each track is negotiated down to one
forwardable codec (`pick_forwardable`), a replacement connection must offer the codec the
track's legs already use (`pick_matching`), and each subscriber leg offers exactly that
codec (`capabilities_for`). Also here: the per-track offer check (`sole_media_section`),
remote descriptions and ICE candidates with aiortc's failures named (`InvalidSdp`,
`InvalidCandidate`). `forwarder.node` applies these to its peer connections.
"""

from __future__ import annotations

import copy

from aiortc import (
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCSessionDescription,
)
from aiortc.codecs import is_rtx
from aiortc.exceptions import InvalidAccessError as AiortcInvalidAccess
from aiortc.exceptions import InvalidStateError as AiortcInvalidState
from aiortc.exceptions import OperationError as AiortcOperationError
from aiortc.sdp import candidate_from_sdp

from forwarder.errors import (
    CodecChanged,
    InvalidCandidate,
    InvalidSdp,
    NoForwardableCodec,
    WrongMediaSections,
)
from rtc.aiortc_adapter import codec_capabilities
from rtc.packets import CodecInfo, MediaKind

_RED = "audio/red"

FORWARDABLE_CODECS: dict[str, tuple[str, ...]] = {
    "video": ("video/vp8", "video/h264", "video/vp9", "video/av1"),
    "audio": ("audio/opus", "audio/g722", "audio/pcmu", "audio/pcma"),
}
"""What a publisher may send: every subscriber must take the same codec."""


def pick_forwardable(
    kind: MediaKind, codecs: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    """The publisher's first forwardable codec among `codecs`, with its RTX if negotiated.

    `codecs` are in the offer's order, which is the publisher's preference (a browser puts
    VP8 first unless told otherwise, e.g. by the browser SDK's `codec` publish option);
    H.264 only with packetization-mode 1. RED (RFC 2198) listed before Opus is kept in
    front of it, so the publisher sends Opus with redundancy; the track's codec
    (`track_codec`) is still Opus.
    """
    allowed = FORWARDABLE_CODECS[kind]
    media = [c for c in codecs if not is_rtx(c) and c.mimeType.lower() in (*allowed, _RED)]
    if media and media[0].mimeType.lower() == _RED:
        opus = [c for c in codecs if c.mimeType.lower() == "audio/opus"]
        if opus:
            red = copy.deepcopy(media[0])
            red.parameters = {f"{opus[0].payloadType}/{opus[0].payloadType}": None}
            return [red, opus[0]]
    for codec in codecs:
        mime_type = codec.mimeType.lower()
        if mime_type in allowed and not (
            mime_type == "video/h264" and str(codec.parameters.get("packetization-mode")) != "1"
        ):
            rtx = [c for c in codecs if is_rtx(c) and c.parameters.get("apt") == codec.payloadType]
            return [codec, *rtx[:1]]
    raise NoForwardableCodec(kind, [c.mimeType for c in codecs if not is_rtx(c)])


def track_codec(codecs: list[RTCRtpCodecParameters]) -> RTCRtpCodecParameters:
    """The codec a track is carried in, among those `pick_forwardable` kept (not RED)."""
    return next(c for c in codecs if c.mimeType.lower() != _RED)


def pick_matching(
    track_id: str, codec: CodecInfo, kind: MediaKind, offered: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    """The offered codec that carries `codec` unchanged, with its RTX if negotiated."""
    for candidate in offered:
        if not is_rtx(candidate) and _same_codec(codec, codec_info(kind, candidate)):
            rtx = [
                c for c in offered if is_rtx(c) and c.parameters.get("apt") == candidate.payloadType
            ]
            return [candidate, *rtx[:1]]
    raise CodecChanged(track_id, codec.mime_type, [c.mimeType for c in offered if not is_rtx(c)])


def _same_codec(published: CodecInfo, offered: CodecInfo) -> bool:
    """Whether packets of `offered` can go to legs negotiated for `published`.

    Payload types may differ (every leg rewrites them); for H.264 the profile and the
    packetization mode must match, other fmtp parameters do not change the bitstream.
    """
    if (published.kind, published.mime_type.lower(), published.clock_rate) != (
        offered.kind,
        offered.mime_type.lower(),
        offered.clock_rate,
    ) or (published.channels or 1) != (offered.channels or 1):
        return False
    if published.name != "H264":
        return True
    before, after = dict(published.parameters), dict(offered.parameters)
    return all(
        before.get(name, "").lower() == after.get(name, "").lower()
        for name in ("profile-level-id", "packetization-mode")
    )


def sole_media_section(offer_sdp: str, kind: MediaKind) -> str:
    """The MID of a per-track offer's only m-line, which must be of `kind`.

    Peer connections are per track: an offer with more or other m-lines is refused
    (`WrongMediaSections`) before any peer connection is made for it.
    """
    sections: list[list[str]] = []
    for line in offer_sdp.splitlines():
        if line.startswith("m="):
            sections.append([line[2:].split(" ", 1)[0]])
        elif sections and line.startswith("a=mid:"):
            sections[-1].append(line[6:].strip())
    if len(sections) != 1 or sections[0][0] != kind:
        raise WrongMediaSections(kind, [section[0] for section in sections])
    if len(sections[0]) < 2 or not sections[0][1]:
        raise InvalidSdp("offer", "its m-line has no a=mid")
    return sections[0][1]


async def apply_remote(pc: RTCPeerConnection, sdp: str, sdp_type: str) -> None:
    """setRemoteDescription, with what aiortc raises on bad SDP named `InvalidSdp`."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
    except (ValueError, KeyError, IndexError, AiortcInvalidAccess, AiortcInvalidState) as exc:
        raise InvalidSdp(sdp_type, f"{type(exc).__name__}: {exc}") from None
    except AiortcOperationError as exc:  # aiortc: a media section with no codec it knows
        raise InvalidSdp(sdp_type, f"no codec in common: {exc}") from None


def parse_candidate(
    candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
) -> RTCIceCandidate | None:
    """A remote ICE candidate from its SDP attribute value; None for end-of-candidates."""
    text = candidate.strip()
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    if not text:
        return None  # end of candidates
    if sdp_mid is None and sdp_mline_index is None:
        raise InvalidCandidate(candidate, "it names no media section (sdpMid, sdpMLineIndex)")
    if len(text.split()) < 8:
        raise InvalidCandidate(candidate, "fewer than 8 fields")
    try:
        parsed = candidate_from_sdp(text)
    except (ValueError, IndexError) as exc:
        raise InvalidCandidate(candidate, f"{type(exc).__name__}: {exc}") from None
    parsed.sdpMid = sdp_mid
    parsed.sdpMLineIndex = sdp_mline_index
    return parsed


def capabilities_for(codec: CodecInfo) -> list[RTCRtpCodecCapability]:
    """The subscriber leg's codec preferences: exactly the publisher's codec (+ RTX)."""
    capabilities = codec_capabilities(codec.kind)
    chosen = [c for c in capabilities if codec_info(codec.kind, c) == codec]
    if not chosen:
        raise NoForwardableCodec(codec.kind, [codec.mime_type])
    rtx = [c for c in capabilities if is_rtx(c)] if codec.kind == "video" else []
    # Opus legs also offer RED: a leg that gets it receives a RED publisher's packets as
    # they are; one that does not gets their primary block as plain Opus.
    red = [c for c in capabilities if c.mimeType.lower() == _RED] if codec.name == "OPUS" else []
    return chosen[:1] + rtx[:1] + red[:1]


def codec_info(kind: MediaKind, codec: RTCRtpCodecParameters | RTCRtpCodecCapability) -> CodecInfo:
    """A `CodecInfo` from aiortc's codec parameters or capability."""
    return CodecInfo(
        kind=kind,
        mime_type=codec.mimeType,
        clock_rate=codec.clockRate,
        channels=codec.channels,
        parameters=tuple(sorted((str(k), str(v)) for k, v in codec.parameters.items())),
    )
