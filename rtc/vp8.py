"""The VP8 RTP payload descriptor (RFC 7741 section 4.2): read it, and rewrite its ids.

A forwarder that switches a subscriber between simulcast layers splices three independent
streams into one. Each layer numbers its pictures (picture id, 7 or 15 bits) and its base
temporal layer frames (TL0PICIDX, 8 bits) on its own; a decoder that sees either jump
assumes lost frames and asks for a keyframe or freezes. `rewrite_vp8_descriptor` gives a
payload new values for both without touching the VP8 bitstream after the descriptor. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtc.errors import MalformedPayload

PICTURE_ID_MODULO = 1 << 15
TL0PICIDX_MODULO = 1 << 8

_X, _S, _PID = 0x80, 0x10, 0x0F
_I, _L, _T, _K = 0x80, 0x40, 0x20, 0x10
_M = 0x80


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """What a VP8 payload descriptor says, and where the VP8 payload starts."""

    start_of_partition: bool
    partition_index: int
    picture_id: int | None
    """7 or 15 bits, None when absent."""
    picture_id_bits: int
    """7, 15, or 0 when absent."""
    tl0picidx: int | None
    temporal_id: int | None
    layer_sync: bool
    header_size: int
    """Bytes of descriptor before the VP8 payload."""
    keyframe: bool
    """The first packet of a keyframe (start of partition 0 with the P bit clear)."""


def parse_vp8_descriptor(payload: bytes) -> Vp8Descriptor:
    """Read the descriptor at the start of a VP8 RTP payload.

    Raises `MalformedPayload` when the payload ends inside the descriptor.
    """
    if not payload:
        raise MalformedPayload("VP8", "empty payload")
    first = payload[0]
    pos = 1
    picture_id: int | None = None
    pid_bits = 0
    tl0: int | None = None
    tid: int | None = None
    sync = False
    if first & _X:
        if len(payload) < 2:
            raise MalformedPayload("VP8", "descriptor ends after X")
        ext = payload[1]
        pos = 2
        if ext & _I:
            if len(payload) <= pos:
                raise MalformedPayload("VP8", "descriptor ends before the picture id")
            if payload[pos] & _M:
                if len(payload) <= pos + 1:
                    raise MalformedPayload("VP8", "descriptor ends inside the picture id")
                picture_id = (payload[pos] & 0x7F) << 8 | payload[pos + 1]
                pid_bits = 15
                pos += 2
            else:
                picture_id = payload[pos]
                pid_bits = 7
                pos += 1
        if ext & _L:
            if len(payload) <= pos:
                raise MalformedPayload("VP8", "descriptor ends before TL0PICIDX")
            tl0 = payload[pos]
            pos += 1
        if ext & (_T | _K):
            if len(payload) <= pos:
                raise MalformedPayload("VP8", "descriptor ends before TID/KEYIDX")
            if ext & _T:
                tid = payload[pos] >> 6
                sync = bool(payload[pos] & 0x20)
            pos += 1
    start = bool(first & _S)
    index = first & _PID
    keyframe = start and index == 0 and len(payload) > pos and not payload[pos] & 0x01
    return Vp8Descriptor(
        start_of_partition=start,
        partition_index=index,
        picture_id=picture_id,
        picture_id_bits=pid_bits,
        tl0picidx=tl0,
        temporal_id=tid,
        layer_sync=sync,
        header_size=pos,
        keyframe=keyframe,
    )


def rewrite_vp8_descriptor(
    payload: bytes, descriptor: Vp8Descriptor, *, picture_id: int | None, tl0picidx: int | None
) -> bytes:
    """`payload` with its picture id and TL0PICIDX replaced (when present in it).

    A picture id is always written in the 15-bit form, so a 7-bit one grows the descriptor
    by one byte: the spliced stream's ids then never wrap at 128 where a layer's did not.
    Fields the payload does not carry are left absent; the VP8 data is copied unchanged.
    """
    if not payload[0] & _X:
        return payload
    ext = payload[1]
    out = bytearray(payload[:2])
    pos = 2
    if ext & _I:
        value = descriptor.picture_id if picture_id is None else picture_id
        assert value is not None
        value %= PICTURE_ID_MODULO
        out += bytes([_M | value >> 8, value & 0xFF])
        pos += 2 if descriptor.picture_id_bits == 15 else 1
    if ext & _L:
        value = descriptor.tl0picidx if tl0picidx is None else tl0picidx
        assert value is not None
        out.append(value % TL0PICIDX_MODULO)
        pos += 1
    out += payload[pos:]
    return bytes(out)


_START_CODE = b"\x9d\x01\x2a"
_SIZE_MASK = 0x3FFF


def vp8_keyframe_size(payload: bytes, descriptor: Vp8Descriptor) -> tuple[int, int] | None:
    """The (width, height) a VP8 keyframe's header carries (RFC 6386 section 9.1), read
    from the first packet of the keyframe; None for any other packet, or a header cut short
    or without the keyframe start code. The 2-bit upscaling hints are dropped: the size is
    what is encoded. A forwarder learns a simulcast layer's real size from it for free."""
    if not descriptor.keyframe:
        return None
    header = payload[descriptor.header_size : descriptor.header_size + 10]
    if len(header) < 10 or header[3:6] != _START_CODE:
        return None
    width = int.from_bytes(header[6:8], "little") & _SIZE_MASK
    height = int.from_bytes(header[8:10], "little") & _SIZE_MASK
    return (width, height) if width and height else None
