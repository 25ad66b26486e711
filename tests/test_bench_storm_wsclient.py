"""The storm's minimal WebSocket client against the `websockets` server protocol."""

from __future__ import annotations

import asyncio

from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from stagecast.bench.wsclient import RawWebSocket, client_frame, mask, new_key


class Wire(asyncio.Transport):
    """A transport that keeps what the client wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


class Recorder(RawWebSocket):
    def __init__(self) -> None:
        super().__init__("127.0.0.1", 7880, "/rtc", new_key())
        self.opened_count = 0
        self.messages: list[bytes] = []
        self.failures: list[str] = []

    def on_open(self) -> None:
        self.opened_count += 1
        self.send_binary(b"join")

    def on_binary(self, data: bytes) -> None:
        self.messages.append(data)

    def on_failed(self, reason: str) -> None:
        self.failures.append(reason)


def connected() -> tuple[Recorder, Wire, ServerProtocol]:
    client, wire, server = Recorder(), Wire(), ServerProtocol()
    client.connection_made(wire)
    server.receive_data(wire.take())
    (request,) = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    for chunk in server.data_to_send():
        for i in range(0, len(chunk), 7):  # the head split across reads
            client.data_received(chunk[i : i + 7])
    return client, wire, server


def test_masking_is_an_involution() -> None:
    key, payload = b"\x01\x02\x03\x04", bytes(range(256)) * 3
    assert mask(mask(payload, key), key) == payload
    assert mask(b"", key) == b""
    assert mask(b"\x00" * 5, key) == key + key[:1]


def test_handshake_then_frames_both_ways() -> None:
    client, wire, server = connected()
    assert client.opened_count == 1 and not client.failures
    server.receive_data(wire.take())  # the join, masked: the server accepts only masked
    frames = [f for f in server.events_received() if isinstance(f, Frame)]
    assert [(f.opcode, f.data) for f in frames] == [(Opcode.BINARY, b"join")]
    sizes = (0, 5, 125, 126, 65_535, 65_536, 70_000)
    for size in sizes:
        server.send_binary(bytes([size % 251]) * size)
    stream = b"".join(server.data_to_send())
    for i in range(0, len(stream), 1000):
        client.data_received(stream[i : i + 1000])
    assert [len(m) for m in client.messages] == list(sizes)
    assert client.messages[-1] == bytes([70_000 % 251]) * 70_000


def test_ping_fragments_and_close() -> None:
    client, wire, server = connected()
    wire.take()
    server.send_ping(b"hi")
    server.send_binary(b"ab", fin=False)
    server.send_continuation(b"cd", fin=True)
    server.send_close(1000, "bye")
    client.data_received(b"".join(server.data_to_send()))
    assert client.messages == [b"abcd"]
    assert (client.close_code, client.close_reason) == (1000, "bye")
    assert wire.closed
    server.receive_data(wire.take())
    events = server.events_received()
    assert isinstance(events[0], Frame) and events[0].opcode is Opcode.PONG
    assert events[0].data == b"hi"
    assert isinstance(events[1], Frame) and Close.parse(events[1].data).code == 1000


def test_a_refused_upgrade_or_a_masked_server_frame_fails_the_socket() -> None:
    client, wire = Recorder(), Wire()
    client.connection_made(wire)
    client.data_received(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
    assert client.failures == ["upgrade 403"] and wire.aborted
    client, wire, _ = connected()
    client.data_received(client_frame(0x2, b"x"))  # masked, as only clients may send
    assert client.failures == ["masked server frame"] and wire.aborted


def test_nothing_is_written_to_a_transport_aborted_before_it_is_lost() -> None:
    """uvloop raises on a write to an aborted transport until `connection_lost` runs: the
    bench's closing pass must not (it did, ending a 100,000-viewer run with tracebacks)."""
    client, wire, _ = connected()
    wire.take()  # the join frame `on_open` sent
    client.abort()
    client.send_binary(b"late")
    client.send_close(1000, "bench done")
    assert wire.aborted and wire.take() == b""
