"""Server-to-client WebSocket frames as bytes (RFC 6455, section 5.2), built once.

A frame a server sends is unmasked, so a broadcast is the same bytes for every socket:
the fan-out frames it once per edge and every recipient's transport gets those bytes.
Pure: no IO. Only the frames that go out to many sockets are here (binary messages in one
frame, the empty ping of the liveness sweep); closes, pongs and the reading of what a
client sends are in `edge.wsread`.
"""

from __future__ import annotations

import struct

_BINARY = 0x82
"""FIN + opcode 2 (binary): a whole message in one frame."""
PING = b"\x89\x00"
"""FIN + opcode 9 (ping), no payload."""


def binary_frame(payload: bytes) -> bytes:
    """`payload` as one complete, unmasked binary frame."""
    size = len(payload)
    if size < 126:
        return bytes((_BINARY, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", _BINARY, 126, size) + payload
    return struct.pack("!BBQ", _BINARY, 127, size) + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame made by `binary_frame` (what a client receives)."""
    size = frame[1] & 0x7F
    start = 2 if size < 126 else 4 if size == 126 else 10
    return frame[start:]


__all__ = ["PING", "binary_frame", "frame_payload"]
