"""The signaling socket's frame reader and opening handshake, from bytes (pure, no IO).

Client frames are built two ways: by the `websockets` library's own serializer (what a
real client sends) and by hand, to break the protocol on purpose.
"""

from __future__ import annotations

import os

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from edge.handshake import BadUpgrade, accept_key, accept_upgrade, upgrade_token
from edge.wsread import (
    BINARY,
    CLOSE,
    NO_STATUS,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    parse_close,
    pong_frame,
    text_of,
)


def client_frame(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    """A frame as the `websockets` client library masks and serializes it."""
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


def raw_frame(
    first: int, payload: bytes, *, mask: bool = True, length: bytes | None = None
) -> bytes:
    """A hand-made frame: `first` is the FIN/RSV/opcode byte."""
    size = len(payload)
    if length is None:
        if size < 126:
            length = bytes((size | (0x80 if mask else 0),))
        else:
            length = bytes((126 | (0x80 if mask else 0),)) + size.to_bytes(2, "big")
    if not mask:
        return bytes((first,)) + length + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((first,)) + length + key + masked


def fails(reader: FrameReader, data: bytes) -> FrameError:
    with pytest.raises(FrameError) as caught:
        reader.feed(data)
    return caught.value


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_a_whole_message_of_any_length_reads_back(size: int) -> None:
    payload = os.urandom(size)
    reader = FrameReader(1 << 20)
    assert reader.feed(client_frame(Opcode.BINARY, payload)) == [(BINARY, payload)]


def test_bytes_split_anywhere_read_the_same_messages() -> None:
    frames = [os.urandom(n) for n in (3, 200, 70_000, 0)]
    stream = b"".join(client_frame(Opcode.BINARY, f) for f in frames)
    for step in (1, 7, 4096):
        reader = FrameReader(1 << 20)
        got = []
        for at in range(0, len(stream), step):
            got += reader.feed(stream[at : at + step])
        assert got == [(BINARY, f) for f in frames], step


def test_many_messages_in_one_read_come_out_in_order() -> None:
    stream = b"".join(client_frame(Opcode.BINARY, bytes([i])) for i in range(50))
    assert FrameReader(100).feed(stream) == [(BINARY, bytes([i])) for i in range(50)]


def test_a_fragmented_message_is_reassembled_with_control_frames_in_between() -> None:
    reader = FrameReader(1 << 20)
    stream = (
        client_frame(Opcode.TEXT, "héllo ".encode()[:2], fin=False)
        + client_frame(Opcode.PING, b"are you there")
        + client_frame(Opcode.CONT, "héllo ".encode()[2:], fin=False)
        + client_frame(Opcode.PONG, b"")
        + client_frame(Opcode.CONT, b"world", fin=True)
    )
    received = reader.feed(stream)
    assert received == [(PING, b"are you there"), (PONG, b""), (TEXT, "héllo world".encode())]
    assert text_of(received[2][1]) == "héllo world"
    # The reader is ready for the next message.
    assert reader.feed(client_frame(Opcode.BINARY, b"next")) == [(BINARY, b"next")]


def test_a_close_frame_reads_back_with_its_code_and_reason() -> None:
    reader = FrameReader(100)
    frame = client_frame(Opcode.CLOSE, Close(4001, "bye").serialize())
    [(opcode, payload)] = reader.feed(frame)
    assert opcode == CLOSE and parse_close(payload) == (4001, "bye")
    assert parse_close(b"") == (NO_STATUS, "")


# --------------------------------------------------------------------------- broken frames


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("unmasked", raw_frame(0x82, b"hi", mask=False), 1002),
        ("reserved bit", raw_frame(0x82 | 0x40, b"hi"), 1002),
        ("opcode 3", raw_frame(0x83, b"hi"), 1002),
        ("opcode 11", raw_frame(0x8B, b""), 1002),
        ("fragmented ping", raw_frame(0x09, b""), 1002),
        ("ping over 125 bytes", raw_frame(0x89, b"x" * 126), 1002),
        ("continuation first", raw_frame(0x80, b"hi"), 1002),
        (
            "64-bit length with the top bit",
            raw_frame(0x82, b"", length=b"\xff" + b"\x80" + bytes(7)),
            1002,
        ),
        (
            "new message inside a fragmented one",
            raw_frame(0x02, b"a") + raw_frame(0x82, b"b"),
            1002,
        ),
    ],
)
def test_a_frame_that_breaks_the_protocol_names_its_close_code(
    name: str, data: bytes, code: int
) -> None:
    assert fails(FrameReader(1000), data).code == code, name


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    reader = FrameReader(1000)
    header_only = client_frame(Opcode.BINARY, bytes(1001))[:8]  # no payload sent yet
    assert fails(reader, header_only).code == 1009
    # Fragments count together.
    reader = FrameReader(1000)
    reader.feed(client_frame(Opcode.BINARY, bytes(600), fin=False))
    assert fails(reader, client_frame(Opcode.CONT, bytes(401))).code == 1009
    assert FrameReader(1000).feed(client_frame(Opcode.BINARY, bytes(1000)))[0][1] == bytes(1000)


def test_text_and_close_reasons_must_be_utf8() -> None:
    with pytest.raises(FrameError) as caught:
        text_of(b"\xff\xfe")
    assert caught.value.code == 1007
    with pytest.raises(FrameError) as caught:
        parse_close(b"\x03\xe8\xff")
    assert caught.value.code == 1007


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\xed", b"\x03\xee", b"\x00\x00", b"\x13\x88"])
def test_close_payloads_that_may_not_be_sent_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(FrameError) as caught:
        parse_close(payload)  # one byte; 1005; 1006; 0; 5000
    assert caught.value.code == 1002


def server_frame(data: bytes) -> Frame:
    """`data` read by the `websockets` library's own parser, as a client reads it."""
    stream = StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    parser = Frame.parse(stream.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


def test_server_control_frames_are_what_a_client_library_reads() -> None:
    close = server_frame(close_frame(4019, "TOO_MANY_CONNECTIONS"))
    assert close.opcode is Opcode.CLOSE
    assert Close.parse(close.data) == Close(4019, "TOO_MANY_CONNECTIONS")
    assert server_frame(close_frame(NO_STATUS)).data == b""
    cut = Close.parse(server_frame(close_frame(1000, "é" * 100)).data)
    assert cut.reason == "é" * 61  # 123 bytes allowed: cut at a whole character
    pong = server_frame(pong_frame(b"abc"))
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"abc")


# --------------------------------------------------------------------------- handshake

REQUEST = [
    (b"host", b"edge"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]


def test_the_handshake_answers_with_the_rfc_example_accept_key() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    response = accept_upgrade(b"GET", REQUEST)
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("method", "change", "says"),
    [
        (b"POST", {}, "is a GET"),
        (b"GET", {b"upgrade": b"h2c"}, "Upgrade header"),
        (b"GET", {b"connection": b"keep-alive"}, "Connection header"),
        (b"GET", {b"sec-websocket-version": b"8"}, "Version must be 13"),
        (b"GET", {b"sec-websocket-key": b"short"}, "16 bytes"),
        (b"GET", {b"sec-websocket-key": None}, "is missing"),
    ],
)
def test_a_bad_upgrade_says_what_is_wrong(
    method: bytes, change: dict[bytes, bytes | None], says: str
) -> None:
    headers = [(n, change.get(n, v)) for n, v in REQUEST]
    with pytest.raises(BadUpgrade, match=says):
        accept_upgrade(method, [(n, v) for n, v in headers if v is not None])


def test_the_upgrade_token_comes_from_the_bearer_header_or_the_query() -> None:
    bearer = [(b"authorization", b"Bearer abc.def")]
    assert upgrade_token(bearer, b"access_token=other") == "abc.def"
    assert upgrade_token([(b"authorization", b"Basic xyz")], b"access_token=q%2Bt") == "q+t"
    assert upgrade_token([], b"a=1&access_token=x&access_token=y") == "y"
    assert upgrade_token([], b"access_token=") is None
    assert upgrade_token([], b"") is None
