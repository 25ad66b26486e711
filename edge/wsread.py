"""What a WebSocket client sends, read from bytes (RFC 6455, section 5): pure, no IO.

`FrameReader` turns the bytes a client sends into whole messages and control frames. It
speaks the base protocol only (no extension, so every RSV bit must be clear), requires
every frame to be masked (a client's frames are, section 5.3), reassembles fragmented
messages (control frames may come between the fragments), and stops at the first frame
that breaks the protocol with a `FrameError` that carries the close code to answer with:
1002 for a protocol error, 1007 for a text message or close reason that is not UTF-8,
1009 for a message over the size limit. The socket (`edge.rtcsocket`) is the shell.
"""

from __future__ import annotations

import dataclasses
from typing import Final

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007
MESSAGE_TOO_BIG: Final = 1009
NO_STATUS: Final = 1005
"""The code a close frame without a payload stands for (it is never sent, section 7.4.1)."""

_CONTROL_MAX = 125
_SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))
"""Close codes below 3000 an endpoint may send (the rest are reserved or not for the wire)."""


@dataclasses.dataclass(slots=True)
class FrameError(Exception):
    """The client broke the protocol: close the socket with `code` (and `reason`)."""

    code: int
    reason: str

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


Received = tuple[int, bytes]
"""One thing a client sent: (opcode, payload) of a whole TEXT or BINARY message (its
payload reassembled) or of one CLOSE, PING or PONG frame."""


class FrameReader:
    """The frames of one client connection (see the module docstring).

    `feed` takes bytes as they arrive and returns what they completed; a message grows
    to at most `max_message` bytes (over it: `FrameError` 1009, raised as soon as a frame's
    header shows it, before its payload is read). After a `FrameError` the reader is spent.
    """

    __slots__ = ("_buffer", "_fragments", "_fragments_size", "_message_opcode", "max_message")

    def __init__(self, max_message: int) -> None:
        if max_message < 1:
            raise ValueError("max_message must be positive")
        self.max_message = max_message
        self._buffer = bytearray()
        self._message_opcode = 0
        """TEXT or BINARY while a fragmented message is being reassembled, else 0."""
        self._fragments: list[bytes] = []
        self._fragments_size = 0

    def feed(self, data: bytes) -> list[Received]:
        """Everything `data` completes, in order; raises `FrameError` at a broken frame."""
        buffer = self._buffer
        buffer += data
        out: list[Received] = []
        pos = 0
        end = len(buffer)
        try:
            while end - pos >= 2:
                first, second = buffer[pos], buffer[pos + 1]
                size = second & 0x7F
                head = 2
                if size == 126:
                    if end - pos < 4:
                        break
                    size = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                    head = 4
                elif size == 127:
                    if end - pos < 10:
                        break
                    size = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                    head = 10
                    if size >> 63:
                        raise FrameError(PROTOCOL_ERROR, "frame length over 2**63")
                self._check_header(first, second, size)
                start = pos + head + 4
                if end - start < size:
                    break
                mask = bytes(buffer[start - 4 : start])
                with memoryview(buffer) as view:
                    payload = apply_mask(view[start : start + size], mask)
                pos = start + size
                received = self._frame(first & 0x80, first & 0x0F, payload)
                if received is not None:
                    out.append(received)
        finally:
            if pos:
                del buffer[:pos]
        return out

    def _check_header(self, first: int, second: int, size: int) -> None:
        opcode = first & 0x0F
        if first & 0x70:
            raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
        if not second & 0x80:
            raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
        if opcode >= CLOSE:
            if opcode > PONG:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not first & 0x80:
                raise FrameError(PROTOCOL_ERROR, "fragmented control frame")
            if size > _CONTROL_MAX:
                raise FrameError(PROTOCOL_ERROR, "control frame over 125 bytes")
            return
        if opcode > BINARY:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == CONTINUATION:
            if not self._message_opcode:
                raise FrameError(PROTOCOL_ERROR, "continuation frame without a message")
        elif self._message_opcode:
            raise FrameError(PROTOCOL_ERROR, "new message before the last one ended")
        if self._fragments_size + size > self.max_message:
            raise FrameError(MESSAGE_TOO_BIG, f"message over {self.max_message} bytes")

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Received | None:
        if opcode >= CLOSE:
            return opcode, payload
        if opcode != CONTINUATION:
            if fin:
                return opcode, payload
            self._message_opcode = opcode
            self._fragments = [payload]
            self._fragments_size = len(payload)
            return None
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        if not fin:
            return None
        message = self._message_opcode, b"".join(self._fragments)
        self._message_opcode = 0
        self._fragments = []
        self._fragments_size = 0
        return message


def text_of(payload: bytes) -> str:
    """A text message's payload as a string; `FrameError` 1007 when it is not UTF-8."""
    try:
        return payload.decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "text message is not UTF-8") from None


def parse_close(payload: bytes) -> tuple[int, str]:
    """The (code, reason) of a close frame's payload; (1005, "") when it has none.

    Raises `FrameError`: 1002 for a one-byte payload or a code no endpoint may send,
    1007 for a reason that is not UTF-8.
    """
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


def close_frame(code: int, reason: str = "") -> bytes:
    """A server's (unmasked) close frame; no payload for `NO_STATUS` (an echo of an empty
    close). A reason is cut to fit the 125-byte control frame limit."""
    if code == NO_STATUS:
        return b"\x88\x00"
    text = reason.encode()[: _CONTROL_MAX - 2].decode(errors="ignore")  # whole characters
    payload = code.to_bytes(2, "big") + text.encode()
    return bytes((0x88, len(payload))) + payload


def pong_frame(payload: bytes) -> bytes:
    """The (unmasked) pong answering a ping with `payload` (at most 125 bytes)."""
    return bytes((0x8A, len(payload))) + payload


__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "INVALID_DATA",
    "MESSAGE_TOO_BIG",
    "NO_STATUS",
    "PING",
    "PONG",
    "PROTOCOL_ERROR",
    "TEXT",
    "FrameError",
    "FrameReader",
    "Received",
    "close_frame",
    "parse_close",
    "pong_frame",
    "text_of",
]
