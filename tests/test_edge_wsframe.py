"""`edge.wsframe`: frames built once parse as what a client receives (RFC 6455). Pure."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from edge.wsframe import PING, binary_frame, frame_payload


def _parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_000])
def test_a_binary_frame_is_one_whole_unmasked_message(size: int) -> None:
    payload = bytes(k % 251 for k in range(size))
    frame = _parse(binary_frame(payload))
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload
    assert frame_payload(binary_frame(payload)) == payload


def test_the_ping_is_empty() -> None:
    frame = _parse(PING)
    assert frame.opcode is Opcode.PING and frame.fin and frame.data == b""
