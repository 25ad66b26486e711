"""The edge's own signaling socket against real clients: the `websockets` client library
and raw bytes on a TCP connection (handshakes and frames broken on purpose)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket as tcp
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.frames import Close, Frame, Opcode

from edge import rtcsocket
from edge.app import rtc_entry
from edge.config import EdgeConfig
from edge.main import _listener
from edge.node import EdgeNode
from edge.rtcsocket import Liveness, RtcSocket
from edge.session import EdgeSession
from edge.wsframe import frame_payload
from schemas.client import Disconnect, Error, Join, JoinAccepted, Ping, Pong
from schemas.codec import decode, encode
from tests.edge_fixtures import API_KEY, API_SECRET, Stack, edge_stack

HANDSHAKE = (
    b"GET /rtc{query} HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MAX_MESSAGE = 100_000


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with edge_stack(tmp_path, ws_max_size=MAX_MESSAGE) as running:
        yield running


def masked(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


def pongs(payloads: list[bytes | str]) -> list[int]:
    """The request ids of the `pong` replies among `payloads` (every one must be a pong)."""
    replies = [decode(p) for p in payloads if isinstance(p, bytes)]
    assert all(isinstance(r, Pong) for r in replies) and len(replies) == len(payloads), replies
    return [r.id for r in replies if isinstance(r, Pong)]


class RawSocket:
    """A TCP connection to the edge that speaks WebSocket by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def frame(self, within: float = 10.0) -> tuple[int, bytes]:
        """The next frame the edge sends: (opcode, payload)."""
        head = await asyncio.wait_for(self.reader.readexactly(2), within)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        assert not head[1] & 0x80, "a server frame must not be masked"
        return head[0] & 0x0F, await self.reader.readexactly(size)

    async def close_code(self, within: float = 10.0) -> tuple[int, str]:
        """Read until the edge's close frame: its code and reason; then the TCP side ends."""
        while True:
            opcode, payload = await self.frame(within)
            if opcode == Opcode.CLOSE:
                close = Close.parse(payload)
                return close.code, close.reason

    async def eof(self, within: float = 10.0) -> None:
        assert await asyncio.wait_for(self.reader.read(), within) == b""


@contextlib.asynccontextmanager
async def raw_socket(
    stack: Stack, first: bytes = b"", query: bytes = b""
) -> AsyncIterator[RawSocket]:
    """An open socket; `first` goes out in the same write as the handshake."""
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(HANDSHAKE.replace(b"{query}", query) + first)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        yield RawSocket(reader, writer)
    finally:
        writer.close()


async def http_exchange(stack: Stack, request: bytes) -> bytes:
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()


# --------------------------------------------------------------------------- a real client


async def test_a_fragmented_request_with_a_ping_between_its_fragments_is_answered(
    stack: Stack,
) -> None:
    async with connect(stack.ws_url) as ws:
        data = encode(Ping(id=7, at=1))
        await ws.send([data[:3], data[3:5], data[5:]])  # three fragments
        assert pongs([await asyncio.wait_for(ws.recv(), 10)]) == [7]
        pong = await ws.ping(b"heartbeat")
        await asyncio.wait_for(pong, 10)  # the edge answered the client's ping


async def test_the_edge_echoes_the_code_of_a_close_the_client_starts(stack: Stack) -> None:
    ws = await connect(stack.ws_url)
    await ws.close(4001, "done here")
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4001


async def test_the_token_may_come_in_the_query_of_the_upgrade(stack: Stack) -> None:
    token = stack.token("query-user")
    async with connect(f"{stack.ws_url}?access_token={token}") as ws:
        await ws.send(encode(Join(id=1, token="")))
        data = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(data, bytes), data
        reply = decode(data)
        assert isinstance(reply, JoinAccepted) and reply.participant.id == "query-user", reply


# --------------------------------------------------------------------------- raw bytes


async def test_frames_sent_with_the_handshake_and_between_fragments_are_all_read(
    stack: Stack,
) -> None:
    data = encode(Ping(id=3, at=9))
    first = (
        masked(Opcode.BINARY, encode(Ping(id=2, at=9)))  # in the same packet as the head
        + masked(Opcode.BINARY, data[:4], fin=False)
        + masked(Opcode.PING, b"mid")
        + masked(Opcode.CONT, data[4:])
    )
    async with raw_socket(stack, first) as sock:
        seen = [await sock.frame() for _ in range(3)]
        assert (Opcode.PONG, b"mid") in seen
        assert pongs([p for op, p in seen if op == Opcode.BINARY]) == [2, 3]


async def test_an_upgrade_whose_head_comes_in_pieces_opens_the_socket_too(stack: Stack) -> None:
    """A head not whole in the first bytes goes through h11 (not the plain reading);
    frames sent with its last piece are read all the same."""
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = HANDSHAKE.replace(b"{query}", b"?access_token=unused")
        writer.write(head[:30])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(head[30:] + masked(Opcode.BINARY, encode(Ping(id=4, at=1))))
        reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        assert reply.startswith(b"HTTP/1.1 101 "), reply
        assert pongs([(await RawSocket(reader, writer).frame())[1]]) == [4]
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("name", "frame", "code"),
    [
        ("an unmasked frame", b"\x82\x02hi", 1002),
        ("an unknown opcode", b"\x83\x80abcd", 1002),
        ("a continuation with no message", masked(Opcode.CONT, b"x"), 1002),
        ("text that is not UTF-8", b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),
        ("a message over ws_max_size", masked(Opcode.BINARY, bytes(MAX_MESSAGE + 1)), 1009),
        ("a close with a reserved code", masked(Opcode.CLOSE, b"\x03\xed"), 1002),
    ],
)
async def test_a_frame_that_breaks_the_protocol_closes_the_socket_with_its_code(
    stack: Stack, name: str, frame: bytes, code: int
) -> None:
    async with raw_socket(stack) as sock:
        sock.writer.write(frame)
        assert (await sock.close_code())[0] == code, name
        await sock.eof()
    # Nothing else is affected.
    joined = await stack.join("after-" + name.replace(" ", "-"))
    await joined.sync()


async def test_a_close_without_a_code_is_echoed_empty_and_text_gets_bad_request(
    stack: Stack,
) -> None:
    async with raw_socket(stack) as sock:
        sock.writer.write(masked(Opcode.TEXT, b'{"t": "ping"}'))
        opcode, payload = await sock.frame()
        error = decode(payload)
        assert opcode == Opcode.BINARY and isinstance(error, Error), error
        assert error.code == "BAD_REQUEST"
        sock.writer.write(masked(Opcode.CLOSE, b""))
        assert await sock.frame() == (Opcode.CLOSE, b"")
        await sock.eof()


async def test_a_message_between_1_mib_and_ws_max_size_gets_payload_too_large(
    tmp_path: Path,
) -> None:
    async with edge_stack(tmp_path) as stack:  # ws_max_size 4 MiB
        big = msgpack.packb({"t": "ping", "id": 1, "pad": os.urandom(2 * 1024 * 1024)})
        async with raw_socket(stack) as sock:
            sock.writer.write(masked(Opcode.BINARY, big))
            error = decode((await sock.frame())[1])
            assert isinstance(error, Error) and error.code == "PAYLOAD_TOO_LARGE", error
            sock.writer.write(masked(Opcode.BINARY, encode(Ping(id=2, at=1))))
            assert pongs([(await sock.frame())[1]]) == [2]


# --------------------------------------------------------------------------- bad upgrades


@pytest.mark.parametrize(
    ("request_head", "says"),
    [
        (b"GET /rtc HTTP/1.1\r\nHost: edge\r\n\r\n", b"Upgrade header must name websocket"),
        (
            HANDSHAKE.replace(b"{query}", b"").replace(b"Version: 13", b"Version: 8"),
            b"Sec-WebSocket-Version must be 13",
        ),
        (
            HANDSHAKE.replace(b"{query}", b"").replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="),
            b"Sec-WebSocket-Key must be 16 bytes",
        ),
    ],
)
async def test_a_bad_upgrade_gets_400_and_says_why(
    stack: Stack, request_head: bytes, says: bytes
) -> None:
    reply = await http_exchange(stack, request_head)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert says in reply
    if b"Version" in says:
        assert b"sec-websocket-version: 13\r\n" in reply


async def test_an_upgrade_on_another_path_is_plain_http(stack: Stack) -> None:
    request = HANDSHAKE.replace(b"/rtc{query}", b"/elsewhere")
    request = request.replace(b"Connection: Upgrade", b"Connection: Upgrade, close")
    assert (await http_exchange(stack, request)).startswith(b"HTTP/1.1 404 ")


# --------------------------------------------------------------------------- stopping


async def test_stopping_the_edge_leaves_no_signaling_socket_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn does not know these sockets: the edge tells them to go and, when one never
    answers its close, aborts it rather than leave it open (or wait for it)."""
    monkeypatch.setattr(rtcsocket, "CLOSE_TIMEOUT", 3600.0)  # only the stop can close it
    stopping = edge_stack(tmp_path)
    stack = await stopping.__aenter__()
    try:
        async with raw_socket(stack) as sock:  # it never answers the close
            sock.writer.write(masked(Opcode.BINARY, encode(Ping(id=1, at=1))))
            assert pongs([(await sock.frame())[1]]) == [1]
            await asyncio.wait_for(stopping.__aexit__(None, None, None), 30)
            stopped = True
            opcode, payload = await sock.frame()
            assert opcode == Opcode.BINARY and b"SERVER_SHUTDOWN" in payload
            assert await sock.close_code() == (4017, "SERVER_SHUTDOWN")
            with contextlib.suppress(ConnectionResetError):
                await sock.eof()  # closed by the edge, not by this client
    finally:
        if not locals().get("stopped"):
            await stopping.__aexit__(None, None, None)


# --------------------------------------------------------------------------- the entry


class RecordingTransport(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def resume_reading(self) -> None:
        pass


async def test_a_draining_edge_tells_a_new_socket_to_resume_elsewhere() -> None:
    config = EdgeConfig(nats_url="nats://127.0.0.1:1", api_key=API_KEY, api_secret=API_SECRET)
    node = EdgeNode(config)  # never started: the entry needs no NATS
    enter = rtc_entry(node)
    liveness = Liveness(node.metrics, 10.0, 20.0)
    loop = asyncio.get_running_loop()

    served = RtcSocket(RecordingTransport(), loop, liveness, 1000, lambda: None)
    session = enter(served, "a-token")
    assert isinstance(session, EdgeSession) and session.upgrade_token == "a-token"
    served.receiver = session  # as edge.serving does
    assert node.sockets == {session}

    node.draining = True
    transport = RecordingTransport()
    refused = RtcSocket(transport, loop, liveness, 1000, lambda: None)
    assert enter(refused, None) is None
    frame, close = transport.written
    assert decode(frame_payload(frame)) == Disconnect(reason="SERVER_SHUTDOWN", can_reconnect=True)
    assert Close.parse(frame_payload(close)) == Close(4017, "SERVER_SHUTDOWN")
    assert node.sockets == {session}

    for socket in (served, refused):
        socket.connection_lost(None)
    await asyncio.wait_for(session.closed.wait(), 5)
    assert node.sockets == set()


class AskedTransport(RecordingTransport):
    """A transport that keeps the extra information asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        self.asked.append(name)
        return default


@pytest.mark.skipif(not hasattr(tcp, "TCP_USER_TIMEOUT"), reason="Linux only")
async def test_accepted_sockets_take_the_user_timeout_from_the_edges_listener() -> None:
    """`Liveness.watch_listener`: set once on the listener (as `edge.main` binds it), each
    accepted socket has the option, so `watch_writes` sets it no more per socket."""
    config = EdgeConfig(nats_url="nats://127.0.0.1:1", api_key=API_KEY, api_secret=API_SECRET)
    liveness = Liveness(EdgeNode(config).metrics, 10.0, 20.0, 120.0)
    app = "edge.app:create_app"  # never loaded: only bound
    listener = _listener(uvicorn.Config(app=app, host="127.0.0.1", port=0), liveness)
    assert listener is not None and liveness.listener_watched
    with listener, tcp.socket() as client:
        listener.listen()
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(tcp.IPPROTO_TCP, tcp.TCP_USER_TIMEOUT) == 20_000
            transport = AskedTransport()
            liveness.watch_writes(transport)  # nothing to set: it never asks for the socket
            assert transport.asked == []

    by_name = Liveness(EdgeNode(config).metrics, 10.0, 20.0, 120.0)
    assert _listener(uvicorn.Config(app=app, host="localhost", port=0), by_name) is None
    assert not by_name.listener_watched  # uvicorn binds it; each socket gets the option
