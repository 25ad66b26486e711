"""`edge.handshake.plain_rtc_request`: what it reads is what h11 reads, and it leaves to h11
everything that is not a whole, plain ``GET /rtc`` head (unit tests, no IO)."""

from __future__ import annotations

import h11
import pytest

from edge.handshake import PLAIN_HEAD_MAX, plain_rtc_request

HEAD = (
    b"GET /rtc HTTP/1.1\r\nHost: 127.0.0.1:7880\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
FRAME = b"\x82\x85abcd" + bytes(b ^ m for b, m in zip(b"hello", b"abcda", strict=True))


def h11_reads(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """(method, target, headers, trailing bytes) as the edge's h11 path reads them."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    trailing, _ = conn.trailing_data
    return event.method, event.target, [(k.lower(), v) for k, v in event.headers], trailing


@pytest.mark.parametrize(
    "data",
    [
        HEAD,
        HEAD + FRAME,
        HEAD.replace(b"GET /rtc ", b"GET /rtc?access_token=a.b-c_d&x=%20 "),
        HEAD.replace(b"Upgrade: websocket", b"UPGRADE:\twebsocket \t"),
        HEAD.replace(
            b"\r\n\r\n", b"\r\nX-Empty:\r\nX-Spaced:  a  b  \r\nAuthorization: Bearer t\r\n\r\n"
        ),
        HEAD.replace(b"\r\n\r\n", b"\r\nX-Latin: caf\xe9\r\n\r\n"),
    ],
)
def test_a_plain_head_is_read_as_h11_reads_it(data: bytes) -> None:
    plain = plain_rtc_request(data)
    assert plain is not None
    method, target, headers, trailing = h11_reads(data)
    assert method == b"GET"
    path, _, query = target.partition(b"?")
    assert path == b"/rtc"
    assert plain.query == query
    assert plain.headers == headers
    assert plain.trailing == trailing


@pytest.mark.parametrize(
    "data",
    [
        HEAD[:-2],  # not whole yet
        HEAD.replace(b"GET /rtc ", b"GET /rtc/x "),
        HEAD.replace(b"GET /rtc ", b"GET /elsewhere "),
        HEAD.replace(b"GET ", b"POST "),
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"GET /rtc ", b"GET /rtc?\x7f "),
        HEAD.replace(b"Host: 127.0.0.1:7880\r\n", b""),
        HEAD.replace(b"Host: 127.0.0.1:7880\r\n", b"Host: a\r\nHost: b\r\n"),
        HEAD.replace(b"\r\n\r\n", b"\r\n folded\r\n\r\n"),
        HEAD.replace(b"\r\n\r\n", b"\r\nBad Name: x\r\n\r\n"),
        HEAD.replace(b"\r\n\r\n", b"\r\nX: a\x00b\r\n\r\n"),
        HEAD.replace(b"\r\n\r\n", b"\r\nno colon\r\n\r\n"),
        HEAD.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello"),
        HEAD.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"),
        HEAD.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"x" * PLAIN_HEAD_MAX + b"\r\n\r\n"),
        HEAD.replace(b"\r\n", b"\n"),
    ],
)
def test_anything_else_is_left_to_h11(data: bytes) -> None:
    assert plain_rtc_request(data) is None
