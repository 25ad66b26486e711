"""The storm's minimal WebSocket client on real loopback sockets, against the `websockets`
server protocol (sans-I/O, behind a plain asyncio server)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from stagecast.bench.wsclient import (
    Poller,
    RawWebSocket,
    accept_value,
    client_frame,
    mask,
    new_key,
    server_frame,
)

WAIT = 10.0


class Recorder(RawWebSocket):
    """Joins on open, then keeps what it is told."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port, "/rtc", new_key())
        self.opened_count = 0
        self.messages: list[bytes] = []
        self.failures: list[str] = []
        self.ended: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def on_open(self) -> None:
        self.opened_count += 1
        self.send_binary(b"join")

    def on_binary(self, data: bytes) -> None:
        self.messages.append(data)

    def on_failed(self, reason: str) -> None:
        self.failures.append(reason)
        if not self.ended.done():
            self.ended.set_result(None)

    def on_closed(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(exc)


Script = Callable[[ServerProtocol, Frame], None]


class Server(asyncio.Protocol):
    """One server connection: `websockets`' protocol; `script` answers each client frame."""

    def __init__(self, script: Script, seen: list[Frame]) -> None:
        self.ws, self.script, self.seen = ServerProtocol(max_size=None), script, seen
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self.ws.send_response(self.ws.accept(event))
            elif isinstance(event, Frame):
                self.seen.append(event)
                self.script(self.ws, event)
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()


@contextlib.asynccontextmanager
async def serving(script: Script, seen: list[Frame]) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(script, seen), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def poller() -> AsyncIterator[Poller]:
    p = Poller()
    yield p
    p.close()


def test_masking_is_an_involution() -> None:
    key, payload = b"\x01\x02\x03\x04", bytes(range(256)) * 3
    assert mask(mask(payload, key), key) == payload
    assert mask(b"", key) == b""
    assert mask(b"\x00" * 5, key) == key + key[:1]


async def test_handshake_frames_ping_fragments_and_close(poller: Poller) -> None:
    sizes = (0, 5, 125, 126, 65_535, 65_536, 70_000)

    def script(ws: ServerProtocol, frame: Frame) -> None:
        if frame.opcode is Opcode.BINARY and frame.data == b"join":
            for size in sizes:
                ws.send_binary(bytes([size % 251]) * size)
            ws.send_ping(b"hi")
            ws.send_binary(b"ab", fin=False)
            ws.send_continuation(b"cd", fin=True)
            ws.send_close(1000, "bye")

    seen: list[Frame] = []
    async with serving(script, seen) as port:
        client = Recorder(port)
        client.connect(poller)
        assert await asyncio.wait_for(client.ended, WAIT) is None
    assert client.opened_count == 1 and not client.failures
    assert [len(m) for m in client.messages] == [*sizes, 4]
    assert client.messages[-2] == bytes([70_000 % 251]) * 70_000
    assert client.messages[-1] == b"abcd"
    assert (client.close_code, client.close_reason) == (1000, "bye")
    assert client.closed and client.sock is None and not poller.sockets
    # What the server read: the join, the pong, the close echoed (all masked: it accepts
    # nothing else).
    assert [f.opcode for f in seen] == [Opcode.BINARY, Opcode.PONG, Opcode.CLOSE]
    assert seen[1].data == b"hi" and Close.parse(seen[2].data).code == 1000


async def raw_server(answer: bytes) -> tuple[asyncio.Server, int]:
    """A server that answers any request with `answer` and keeps the socket open."""

    class Canned(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                assert isinstance(self.transport, asyncio.Transport)
                self.transport.write(answer)

    server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_refused_upgrade_or_a_masked_server_frame_fails_the_socket(
    poller: Poller,
) -> None:
    server, port = await raw_server(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
    client = Recorder(port)
    client.connect(poller)
    await asyncio.wait_for(client.ended, WAIT)
    server.close()
    assert client.failures == ["upgrade 403"] and client.sock is None

    # A 101 whose accept value is right, then a masked frame, as only clients may send.
    key = new_key()
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\n\r\n"
    )
    server, port = await raw_server(head + client_frame(0x2, b"x"))
    client = Recorder(port)
    client._key = key
    client.connect(poller)
    await asyncio.wait_for(client.ended, WAIT)
    server.close()
    assert client.opened_count == 1
    assert client.failures == ["masked server frame"] and client.sock is None


async def test_a_refused_connect_fails_without_closing(poller: Poller) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Recorder(port)
    client.connect(poller)
    await asyncio.wait_for(client.ended, WAIT)
    assert client.failures == ["connect ECONNREFUSED"]
    assert not client.closed and not poller.sockets and not poller.connecting
    client.send_binary(b"late")  # nothing to write to: a no-op
    client.abort()


async def test_the_parser_joins_a_head_and_frames_split_anywhere() -> None:
    """Fed directly (no socket: what the client would write is dropped)."""
    key = new_key()
    client = Recorder(7880)
    client._key = key
    stream = (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: "
        + accept_value(key)
        + b"\r\n\r\n"
        + server_frame(b"counts" * 30)
        + server_frame(bytes(300))
        + server_frame(b"")
    )
    for i in range(0, len(stream), 7):
        client.data_received(stream[i : i + 7])
    assert client.opened_count == 1 and not client.failures
    assert client.messages == [b"counts" * 30, bytes(300), b""]
