"""A minimal WebSocket client on a raw socket, for the storm's simulated clients (RFC 6455).

Just what a signaling client on loopback needs, at the least cost per frame: one handshake
request built by hand (the `Sec-WebSocket-Accept` answer is checked; extensions and
subprotocols are never offered, so none can be agreed), then a frame parser that reads the
2-10 byte header of each server frame (server frames are unmasked: a masked one fails the
connection) and hands complete binary messages to `on_binary`. Pings are answered with
pongs, a server close is echoed, fragments are joined. Every frame the client sends is
masked with a fresh key, as the RFC requires of clients.

No transport, protocol, task or timer per socket: each `RawWebSocket` owns a non-blocking
socket registered (edge-triggered, once) with its process's `Poller`, one epoll that the
event loop watches as a single descriptor. When it is readable, one callback drains up to
`BATCH` ready sockets, each with one `recv` (a read shorter than the buffer means the
socket is drained). Connect timeouts are one sweep per poller. A subclass implements
`on_open`, `on_binary`, `on_failed` and `on_closed`. Linux only (epoll).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import hashlib
import random
import select
import socket
import time

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEAD_LIMIT = 16 * 1024
RECV_SIZE = 65536
"""Bytes asked of each `recv`: a shorter read drains the socket."""
BATCH = 1024
"""Ready sockets handled per wake-up of the poller (more wait for the next loop turn)."""
_SWEEP_S = 0.25
_WATCH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_BROKEN = select.EPOLLERR | select.EPOLLHUP
_ENDING = select.EPOLLRDHUP | _BROKEN


def accept_value(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` value a server must answer to `key`."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def new_key() -> bytes:
    """A `Sec-WebSocket-Key`: 16 random bytes, base64."""
    return base64.b64encode(random.randbytes(16))


@functools.cache
def _request_head(host: str, port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    ).encode()


def handshake_request(host: str, port: int, path: str, key: bytes) -> bytes:
    """The HTTP/1.1 upgrade request of one connection (its head built once per edge)."""
    return _request_head(host, port, path) + key + b"\r\n\r\n"


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


def server_frame(payload: bytes) -> bytes:
    """The bytes of a final, unmasked binary frame carrying `payload`, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 1 << 16:
        return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + n.to_bytes(8, "big") + payload


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()[:120]


class Poller:
    """One epoll for every `RawWebSocket` of a process, watched by the running event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.epoll = select.epoll()
        self.sockets: dict[int, RawWebSocket] = {}
        self.connecting: dict[RawWebSocket, float] = {}  # -> connect deadline (monotonic)
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop.add_reader(self.epoll.fileno(), self._drain)

    def add(self, ws: RawWebSocket, fd: int, timeout: float) -> None:
        """Watch `ws`'s socket `fd` (connecting) and fail it if not connected in `timeout`."""
        self.sockets[fd] = ws
        self.connecting[ws] = time.monotonic() + timeout
        self.epoll.register(fd, _WATCH)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_SWEEP_S, self._sweep)

    def forget(self, ws: RawWebSocket, fd: int) -> None:
        """`ws` closes its socket `fd` (which leaves the epoll with it)."""
        self.sockets.pop(fd, None)
        self.connecting.pop(ws, None)

    def _drain(self) -> None:
        sockets = self.sockets
        for fd, events in self.epoll.poll(0, BATCH):
            ws = sockets.get(fd)
            if ws is not None:
                ws.ready(events)

    def _sweep(self) -> None:
        now = time.monotonic()
        late = [ws for ws, deadline in self.connecting.items() if deadline <= now]
        for ws in late:
            ws.connect_failed("timeout")
        self._sweeper = self.loop.call_later(_SWEEP_S, self._sweep) if self.connecting else None

    def close(self) -> None:
        """Stop watching (the sockets are the caller's to close first)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if not self.epoll.closed:
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()


class RawWebSocket:
    """The client end of one WebSocket (see the module docstring)."""

    __slots__ = ("_buf", "_fragments", "_key", "_out", "close_code", "close_reason", "closed",
                 "connected", "fd", "host", "opened", "path", "poller", "port", "sock")  # fmt: skip

    def __init__(self, host: str, port: int, path: str, key: bytes) -> None:
        self.host, self.port, self.path, self._key = host, port, path, key
        self.sock: socket.socket | None = None  # None before `connect` and once closed
        self.poller: Poller | None = None
        self.fd = -1
        self._buf = b""
        self._out = b""  # bytes the kernel did not take yet
        self._fragments: list[bytes] | None = None
        self.connected = False  # TCP connected (the upgrade request sent)
        self.opened = False
        self.closed = False  # the TCP connection is gone
        self.close_code = 0  # the server's close code (0: none received)
        self.close_reason = ""

    # ------------------------------------------------------------------ subclass hooks

    def on_open(self) -> None:
        """The handshake completed."""

    def on_binary(self, data: bytes) -> None:
        """A complete binary message arrived."""

    def on_refused(self, head: bytes) -> bool:
        """The server answered the upgrade with `head` (lower-cased, without the body)
        instead of 101: True when that is handled (the socket is then aborted, so
        `on_closed` follows), False to fail (`on_failed`)."""
        return False

    def on_failed(self, reason: str) -> None:
        """The connect or the handshake failed, or the server broke the protocol (the
        socket is closed; a failed connect is not followed by `on_closed`)."""

    def on_closed(self, exc: Exception | None) -> None:
        """The TCP connection, once connected, is gone."""

    # ------------------------------------------------------------------ connecting

    def connect(self, poller: Poller, local: str | None = None, timeout: float = 30.0) -> None:
        """Start connecting (from `local`, any port, when given): the upgrade request goes
        out once connected; a failure, or no connection within `timeout`, is `on_failed`."""
        self.poller = poller
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            return self.on_failed(f"connect {errno.errorcode.get(exc.errno or 0, 'socket')}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio and uvloop do
        try:
            if local is not None:
                sock.bind((local, 0))
            err = sock.connect_ex((self.host, self.port))
        except OSError as exc:
            err = exc.errno or errno.EIO
        self.sock, self.fd = sock, sock.fileno()
        if err and err != errno.EINPROGRESS:
            return self.connect_failed(errno.errorcode.get(err, str(err)))
        poller.add(self, self.fd, timeout)

    def connect_failed(self, why: str) -> None:
        self._close_socket()
        self.on_failed(f"connect {why}")

    # ------------------------------------------------------------------ sending

    def _write(self, frame: bytes) -> None:
        sock = self.sock
        if sock is None or not self.connected:
            return
        if self._out:
            self._out += frame
            return
        try:
            sent = sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the next read sees the error
        if sent < len(frame):
            self._out = frame[sent:]

    def _flush(self) -> None:
        out, self._out = self._out, b""
        self._write(out)

    def send_binary(self, payload: bytes) -> None:
        self._write(client_frame(OP_BINARY, payload))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self._write(client_frame(OP_CLOSE, close_payload(code, reason)))

    def abort(self) -> None:
        """Close the socket now; a connected one is then `on_closed(None)`."""
        if self.sock is not None:
            self._close_socket()
            if self.connected:
                self._lost(None)

    def _close_socket(self) -> None:
        sock = self.sock
        if sock is not None:
            self.sock = None
            if self.poller is not None:
                self.poller.forget(self, self.fd)
            sock.close()

    def _lost(self, exc: Exception | None) -> None:
        self._close_socket()
        if not self.closed:
            self.closed = True
            self.on_closed(exc)

    def _fail(self, reason: str) -> None:
        self.on_failed(reason)
        self.abort()

    # ------------------------------------------------------------------ reading

    def ready(self, events: int) -> None:
        """The poller saw `events` on this socket (edge-triggered)."""
        sock = self.sock
        if sock is None:
            return
        if not self.connected:
            if events & _BROKEN:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                return self.connect_failed(errno.errorcode.get(err, str(err)))
            self.connected = True
            if self.poller is not None:
                self.poller.connecting.pop(self, None)
            self._write(handshake_request(self.host, self.port, self.path, self._key))
        if events & (_IN | _ENDING):
            ending = events & _ENDING  # read to the end: no later edge will say so
            recv = sock.recv
            while True:
                try:
                    data = recv(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    return self._lost(exc)
                if not data:
                    return self._lost(None)
                self.data_received(data)
                if self.sock is None or (len(data) < RECV_SIZE and not ending):
                    break
        if events & _OUT and self._out:
            self._flush()

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
                if self.on_refused(head):
                    return self.abort()
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
        if opcode == OP_PING:
            self._write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                self.close_code = int.from_bytes(payload[:2], "big")
                self.close_reason = payload[2:].decode(errors="replace")
            else:
                self.close_code = 1005
            self._write(client_frame(OP_CLOSE, payload[:2]))
            self._lost(None)  # the kernel still sends the echo, then a FIN
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
    "BATCH",
    "OP_BINARY",
    "OP_CLOSE",
    "RECV_SIZE",
    "Poller",
    "RawWebSocket",
    "accept_value",
    "client_frame",
    "handshake_request",
    "mask",
    "new_key",
    "server_frame",
]
