"""A minimal WebSocket client on a raw socket, for the storm's simulated clients (RFC 6455).

Just what a signaling client on loopback needs, at the least cost per frame: one handshake
request built by hand (the `Sec-WebSocket-Accept` answer is checked; extensions and
subprotocols are never offered, so none can be agreed), then a frame parser that reads the
2-10 byte header of each server frame (server frames are unmasked: a masked one fails the
connection) and hands complete binary messages to `on_binary`. Pings are answered with
pongs, a server close is echoed, fragments are joined. Every frame the client sends is
masked with a fresh key, as the RFC requires of clients.

`RawWebSocket` is an `asyncio.Protocol`; a subclass implements `on_open`, `on_binary`,
`on_failed` and `on_closed`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from typing import cast

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEAD_LIMIT = 16 * 1024


def accept_value(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` value a server must answer to `key`."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def new_key() -> bytes:
    """A `Sec-WebSocket-Key`: 16 random bytes, base64."""
    return base64.b64encode(random.randbytes(16))


def handshake_request(host: str, port: int, path: str, key: bytes) -> bytes:
    """The HTTP/1.1 upgrade request of one connection."""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key.decode()}"
        "\r\n\r\n"
    )
    return head.encode()


def mask(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the 4-byte `key` repeated (masking and unmasking are the same)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame of `opcode` carrying `payload`."""
    n, key = len(payload), random.randbytes(4)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()[:120]


class RawWebSocket(asyncio.Protocol):
    """The client end of one WebSocket (see the module docstring)."""

    __slots__ = ("_buf", "_fragments", "_key", "close_code", "close_reason", "closed",
                 "host", "opened", "path", "port", "transport")  # fmt: skip

    def __init__(self, host: str, port: int, path: str, key: bytes) -> None:
        self.host, self.port, self.path, self._key = host, port, path, key
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._fragments: list[bytes] | None = None
        self.opened = False
        self.closed = False  # the TCP connection is gone
        self.close_code = 0  # the server's close code (0: none received)
        self.close_reason = ""

    # ------------------------------------------------------------------ subclass hooks

    def on_open(self) -> None:
        """The handshake completed."""

    def on_binary(self, data: bytes) -> None:
        """A complete binary message arrived."""

    def on_failed(self, reason: str) -> None:
        """The handshake failed or the server broke the protocol (the socket is aborted)."""

    def on_closed(self, exc: Exception | None) -> None:
        """The TCP connection is gone."""

    # ------------------------------------------------------------------ sending

    def _write(self, frame: bytes) -> None:
        # An aborted transport stays set until `connection_lost` runs; uvloop raises on a
        # write to it meanwhile (asyncio ignores it), so `is_closing` is checked too.
        transport = self.transport
        if transport is not None and not self.closed and not transport.is_closing():
            transport.write(frame)

    def send_binary(self, payload: bytes) -> None:
        self._write(client_frame(OP_BINARY, payload))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self._write(client_frame(OP_CLOSE, close_payload(code, reason)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(handshake_request(self.host, self.port, self.path, self._key))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_closed(exc)

    def eof_received(self) -> bool | None:
        return None  # close our end too

    def _fail(self, reason: str) -> None:
        self.on_failed(reason)
        self.abort()

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data, self._buf = self._buf + data, b""
        pos = 0
        if not self.opened:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _HEAD_LIMIT:
                    return self._fail("upgrade head too long")
                self._buf = data
                return
            head = data[:end].lower()
            if not head.startswith(b"http/1.1 101"):
                return self._fail(f"upgrade {head[9:12].decode(errors='replace')}")
            if b"sec-websocket-accept: " + accept_value(self._key).lower() not in head:
                return self._fail("upgrade: wrong Sec-WebSocket-Accept")
            self.opened = True
            self.on_open()
            pos = end + 4
        n = len(data)
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            if b1 & 0x80:
                return self._fail("masked server frame")
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if b0 == 0x82:  # final binary: the hot path
                self.on_binary(data[start:end])
            else:
                self._other(b0 & 0x80, opcode, data[start:end])
            pos = end
        if pos < n:
            self._buf = data[pos:]

    def _other(self, fin: int, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if opcode == OP_PING:
            if transport is not None and not self.closed:
                transport.write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                self.close_code = int.from_bytes(payload[:2], "big")
                self.close_reason = payload[2:].decode(errors="replace")
            else:
                self.close_code = 1005
            if transport is not None and not self.closed:
                transport.write(client_frame(OP_CLOSE, payload[:2]))
                transport.close()
        elif opcode == OP_BINARY and fin:  # a final binary frame with RSV bits set
            self.on_binary(payload)
        elif opcode in (OP_BINARY, OP_TEXT):  # the first fragment of a message
            self._fragments = [payload] if opcode == OP_BINARY else None
        elif opcode == OP_CONTINUATION and self._fragments is not None:
            self._fragments.append(payload)
            if fin:
                data, self._fragments = b"".join(self._fragments), None
                self.on_binary(data)


__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "RawWebSocket",
    "accept_value",
    "client_frame",
    "handshake_request",
    "mask",
    "new_key",
]
