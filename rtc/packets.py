"""RTP at the forwarder's level, with no aiortc types: packets, codecs, sequence rewriting.

Everything here is pure: `MediaPacket` is what the adapter hands over for each received
packet, `SequenceRewriter` gives each subscriber leg a gap-free sequence of its own, and
`is_keyframe_start` tells where a video leg may start decoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

MediaKind = Literal["audio", "video"]

_SEQ_MASK = 0xFFFF
_SEQ_HALF = 0x8000


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """The one codec a published track is carried in (negotiated with its publisher)."""

    kind: MediaKind
    mime_type: str
    """As in SDP, e.g. ``video/VP8`` or ``audio/opus``."""
    clock_rate: int
    channels: int | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    """The fmtp parameters, sorted by name (``profile-level-id`` and friends for H.264)."""

    @property
    def name(self) -> str:
        """The codec name in upper case, e.g. ``VP8``, ``H264``, ``OPUS``."""
        return self.mime_type.split("/", 1)[1].upper()


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """One received RTP packet of a published track, after SRTP and RTX unwrapping."""

    sequence_number: int
    timestamp: int
    marker: int
    payload: bytes
    ssrc: int
    """The publisher's media SSRC (the RTX SSRC never reaches the router)."""
    payload_type: int
    """The publisher's payload type; every leg rewrites it to its own."""
    audio_level: tuple[bool, int] | None = None
    """(voice activity, -dBov) from the ssrc-audio-level extension, if the publisher sent it."""
    padding_size: int = 0
    red: bool = False
    """The payload is RFC 2198 redundant audio (RED around Opus), not Opus itself."""
    rid: str | None = None
    """The simulcast layer (RFC 8852 rid, e.g. ``q``) the packet belongs to, if any."""


class RtpWriter:
    """Serializes one leg's RTP packets: fixed SSRC, payload type and MID, fast.

    Header extensions use the one-byte form (RFC 8285) with the leg's negotiated ids, in
    aiortc's order (MID, abs-send-time, audio level), so the bytes equal what aiortc's
    `RtpPacket.serialize` makes. `usable` is False when an id or the MID does not fit the
    one-byte form; the caller then serializes another way.
    """

    __slots__ = ("_abs_send_time_id", "_audio_level_id", "_mid_element", "_pt", "_ssrc", "usable")

    def __init__(
        self,
        *,
        payload_type: int,
        ssrc: int,
        mid: str | None,
        mid_id: int | None,
        abs_send_time_id: int | None,
        audio_level_id: int | None,
    ) -> None:
        self._pt = payload_type
        self._ssrc = ssrc
        self._mid_element = b""
        self.usable = True
        if mid and mid_id:
            mid_bytes = mid.encode()
            self._mid_element = bytes([mid_id << 4 | (len(mid_bytes) - 1) & 0x0F]) + mid_bytes
            self.usable = mid_id <= 14 and len(mid_bytes) <= 16
        self._abs_send_time_id = abs_send_time_id or 0
        self._audio_level_id = audio_level_id or 0
        for ext_id in (self._abs_send_time_id, self._audio_level_id):
            self.usable = self.usable and ext_id <= 14

    @property
    def extension_layout(self) -> tuple[bytes, int, int]:
        """(the MID element, abs-send-time id, audio level id; 0 for none): what the C
        fan-out (`rtc/_fanout.c`) needs to write the same bytes."""
        return self._mid_element, self._abs_send_time_id, self._audio_level_id

    def serialize(
        self,
        packet: MediaPacket,
        sequence_number: int,
        abs_send_time: int,
        payload_type: int | None = None,
    ) -> bytes:
        """The leg's RTP bytes for `packet` (before SRTP); `payload_type` replaces the
        leg's for this packet (its RED payload type, say)."""
        ext = self._mid_element
        if self._abs_send_time_id:
            ext += bytes([self._abs_send_time_id << 4 | 2]) + abs_send_time.to_bytes(3, "big")
        level = packet.audio_level
        if self._audio_level_id and level is not None:
            ext += bytes([self._audio_level_id << 4, (0x80 if level[0] else 0) | level[1] & 0x7F])
        second = (packet.marker << 7) | (self._pt if payload_type is None else payload_type)
        if not ext:
            head = _RTP_HEADER.pack(0x80, second, sequence_number, packet.timestamp, self._ssrc)
            return head + packet.payload
        ext += b"\x00" * (-len(ext) % 4)
        head = _RTP_HEADER_X.pack(
            0x90, second, sequence_number, packet.timestamp, self._ssrc, 0xBEDE, len(ext) >> 2
        )
        return head + ext + packet.payload


_RTP_HEADER = struct.Struct("!BBHLL")
_RTP_HEADER_X = struct.Struct("!BBHLLHH")


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number `a` comes after `b` (RFC 3550 wrap-around)."""
    return a != b and ((a - b) & _SEQ_MASK) < _SEQ_HALF


class SequenceRewriter:
    """Maps a track's incoming sequence numbers onto one leg's own, gap-free sequence.

    Outgoing = incoming + offset (mod 2^16), so reordering and upstream retransmissions
    keep their place. `restart()` (after a mute, or before a leg's first keyframe) makes
    the next packet follow the last one sent, whatever the incoming gap; packets older
    than that point are stale and `rewrite` returns None for them. `skip` removes an
    in-order packet from the sequence (padding-only packets are not forwarded).
    """

    __slots__ = ("_floor", "_highest_in", "_next_out", "_offset", "_restart")

    def __init__(self, first: int) -> None:
        self._next_out = first & _SEQ_MASK
        self._offset = 0
        self._highest_in = 0
        self._floor = 0
        self._restart = True

    @property
    def started(self) -> bool:
        """Whether a packet was rewritten since the last (re)start."""
        return not self._restart

    def restart(self) -> None:
        """Make the next packet continue right after the last one sent."""
        self._restart = True

    def rewrite(self, seq: int) -> int | None:
        """The outgoing sequence number for incoming `seq`, or None to drop the packet."""
        if self._restart:
            self._restart = False
            out = self._next_out
            self._offset = (out - seq) & _SEQ_MASK
            self._highest_in = self._floor = seq
            self._next_out = (out + 1) & _SEQ_MASK
            return out
        if seq_newer(seq, self._highest_in):
            self._highest_in = seq
            out = (seq + self._offset) & _SEQ_MASK
            self._next_out = (out + 1) & _SEQ_MASK
            return out
        if seq == self._highest_in or not seq_newer(seq, self._floor):
            return None
        return (seq + self._offset) & _SEQ_MASK

    def skip(self, seq: int) -> bool:
        """Leave incoming `seq` out of the leg's sequence; False if it cannot be (forward it).

        Only the packet right after the newest one can be left out without a hole or a
        collision; anything else must be forwarded as is.
        """
        if self._restart:
            return True
        if seq != (self._highest_in + 1) & _SEQ_MASK:
            return False
        self._highest_in = self._floor = seq
        self._offset = (self._offset - 1) & _SEQ_MASK
        return True


class DuplicateFilter:
    """Remembers the last `size` incoming sequence numbers of a track to drop repeats.

    Publishers repeat packets: retransmissions that crossed the original, and Chromium's
    RTX "payload padding" probes that resend recent packets. Forwarding one twice would
    reuse an SRTP index on every leg, which SRTP refuses.
    """

    __slots__ = ("_mask", "_seen")

    def __init__(self, size: int = 1024) -> None:
        if size & (size - 1):
            raise ValueError("size must be a power of two")
        self._mask = size - 1
        self._seen = [-1] * size

    def is_repeat(self, seq: int) -> bool:
        """True if `seq` was seen recently; otherwise remember it and return False."""
        slot = seq & self._mask
        if self._seen[slot] == seq:
            return True
        self._seen[slot] = seq
        return False


def is_keyframe_start(codec_name: str, payload: bytes) -> bool:
    """Whether this RTP payload is the first packet of a keyframe (VP8, VP9, AV1, H.264).

    Read from the payload descriptor alone, never decoded. Other codecs (audio) have no
    keyframes: every packet is a starting point.
    """
    if codec_name == "VP8":
        return _vp8_keyframe_start(payload)
    if codec_name == "H264":
        return _h264_keyframe_start(payload)
    if codec_name == "VP9":
        return _vp9_keyframe_start(payload)
    if codec_name == "AV1":
        return _av1_keyframe_start(payload)
    return True


_VP9_I, _VP9_P, _VP9_L, _VP9_B = 0x80, 0x40, 0x20, 0x08


def _vp9_keyframe_start(payload: bytes) -> bool:
    # RFC 9628 section 4.2: I|P|L|F|B|E|V|Z. A keyframe starts where a frame begins (B)
    # that is not inter-picture predicted (P clear), in the base spatial layer (SID 0).
    if not payload:
        return False
    first = payload[0]
    if not first & _VP9_B or first & _VP9_P:
        return False
    if not first & _VP9_L:
        return True
    pos = 1
    if first & _VP9_I:  # picture id, 7 or 15 bits
        if len(payload) <= pos:
            return False
        pos += 2 if payload[pos] & 0x80 else 1
    # layer indices: TID(3) U(1) SID(3) D(1)
    return len(payload) > pos and (payload[pos] >> 1) & 0x07 == 0


_AV1_Z, _AV1_N = 0x80, 0x08


def _av1_keyframe_start(payload: bytes) -> bool:
    # AV1 RTP payload format section 4.4: aggregation header Z|Y|W|W|N|-|-|-. N marks the
    # first packet of a coded video sequence (a keyframe with its sequence header); Z
    # clear means the packet does not continue an OBU from the one before.
    return bool(payload) and bool(payload[0] & _AV1_N) and not payload[0] & _AV1_Z


def _vp8_keyframe_start(payload: bytes) -> bool:
    # RFC 7741 section 4.2: payload descriptor, then the VP8 payload header.
    if not payload:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x0F:  # S bit set and partition index 0
        return False
    pos = 1
    if first & 0x80:  # X: extended control bits
        if len(payload) < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    # VP8 payload header: P bit (inverse keyframe flag) is bit 0 of the first byte.
    return len(payload) > pos and not payload[pos] & 0x01


_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def _h264_keyframe_start(payload: bytes) -> bool:
    # RFC 6184: single NAL unit, STAP-A aggregate or FU-A fragment.
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == _H264_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            if payload[pos + 2] & 0x1F in (_H264_IDR, _H264_SPS):
                return True
            pos += 2 + size
        return False
    if nal_type == _H264_FU_A and len(payload) > 1:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and fu_header & 0x1F == _H264_IDR
    return False


# -- RED (RFC 2198): redundant audio blocks around Opus, handled without decoding -----------


def _red_headers(payload: bytes) -> tuple[list[int], list[int], int] | None:
    """(header positions, redundant block lengths, where the block data starts), or None
    when the headers run past the payload or the blocks do not fit in it."""
    positions: list[int] = []
    lengths: list[int] = []
    pos = 0
    while True:
        if pos >= len(payload):
            return None
        positions.append(pos)
        if not payload[pos] & 0x80:  # F clear: the last (primary) block's 1-byte header
            pos += 1
            break
        if pos + 4 > len(payload):
            return None
        lengths.append((payload[pos + 2] & 0x03) << 8 | payload[pos + 3])
        pos += 4
    if pos + sum(lengths) > len(payload):
        return None
    return positions, lengths, pos


def red_primary(payload: bytes) -> bytes | None:
    """The primary (newest) block of a RED payload, as a plain Opus payload; None if the
    payload is not well-formed RED."""
    headers = _red_headers(payload)
    if headers is None:
        return None
    _, lengths, start = headers
    return payload[start + sum(lengths) :]


def red_retyped(payload: bytes, payload_type: int) -> bytes | None:
    """The RED payload with every block's payload type set to `payload_type` (a leg's own
    Opus payload type); None if the payload is not well-formed RED."""
    headers = _red_headers(payload)
    if headers is None:
        return None
    out = bytearray(payload)
    for pos in headers[0]:
        out[pos] = (out[pos] & 0x80) | (payload_type & 0x7F)
    return bytes(out)
