"""The short per-leg write path (`rtc.direct_send`): SRTP into a reused buffer, datagrams
straight to the socket in order, and the resumption hook that fills sender reports.

Real libsrtp sessions and real sockets (UDP on loopback, and a Unix datagram socket where
a full receiver must make the write block)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
from collections.abc import Iterator

import pylibsrtp
import pytest

from rtc.direct_send import MAX_RTP_SIZE, DatagramRoute, SrtpProtector, resuming
from rtc.errors import PacketTooLong

KEY = bytes(range(30))  # AES-128 master key (16) + salt (14)


def session(direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=direction)
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


def rtp(sequence_number: int, payload: bytes, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHLL", 0x80, 96, sequence_number, sequence_number * 3000, ssrc) + payload


# -- SrtpProtector -------------------------------------------------------------------------


def test_the_protector_makes_the_bytes_pylibsrtp_makes_and_they_unprotect() -> None:
    reference = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    protector = SrtpProtector(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    receiver = session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    for seq, size in ((1, 0), (2, 1), (3, 1100), (4, MAX_RTP_SIZE - 12), (65535, 7), (0, 9)):
        packet = rtp(seq, bytes((seq + i) & 0xFF for i in range(size)))
        view = protector.protect(packet)
        assert bytes(view) == reference.protect(packet)
        assert len(view) > len(packet)  # the authentication tag
        assert receiver.unprotect(bytes(view)) == packet


def test_the_protector_reuses_one_buffer() -> None:
    protector = SrtpProtector(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    first = protector.protect(rtp(1, b"a" * 100))
    kept = bytes(first)
    protector.protect(rtp(2, b"b" * 100))
    assert bytes(first) != kept  # the view is valid until the next call only, as documented


def test_the_protector_refuses_what_libsrtp_refuses() -> None:
    protector = SrtpProtector(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    with pytest.raises(pylibsrtp.Error):
        protector.protect(b"\x80\x60")  # shorter than an RTP header
    with pytest.raises(PacketTooLong) as raised:
        protector.protect(rtp(1, bytes(MAX_RTP_SIZE)))
    assert raised.value.limit == MAX_RTP_SIZE
    assert protector.protect(rtp(1, b"x"))  # still usable afterwards


# -- DatagramRoute -------------------------------------------------------------------------


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    yield sender, receiver
    sender.close()
    receiver.close()


def test_a_route_writes_straight_to_the_socket(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = udp_pair
    fallen_back: list[bytes] = []
    route = DatagramRoute(
        sender,
        receiver.getsockname(),
        queued=lambda: 0,
        fallback=lambda data, address: fallen_back.append(data),
    )
    buffer = bytearray(b"0123456789")
    assert route.send(memoryview(buffer)[2:6])
    assert route.send(b"second")
    assert receiver.recvfrom(100) == (b"2345", sender.getsockname())
    assert receiver.recv(100) == b"second"
    assert fallen_back == []


def test_a_route_keeps_the_order_behind_what_the_transport_queued(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = udp_pair
    queue: list[bytes] = [b"queued earlier"]
    fallen_back: list[tuple[bytes, object]] = []
    route = DatagramRoute(
        sender,
        receiver.getsockname(),
        queued=lambda: len(queue),
        fallback=lambda data, address: fallen_back.append((data, address)),
    )
    view = memoryview(bytearray(b"later"))
    assert route.send(view)
    assert fallen_back == [(b"later", receiver.getsockname())]
    assert type(fallen_back[0][0]) is bytes  # a copy: the caller's buffer is reused
    receiver.settimeout(0.05)
    with pytest.raises(TimeoutError):
        receiver.recv(100)  # nothing overtook the queue


def test_a_full_socket_hands_the_datagram_to_the_transport() -> None:
    with (
        tempfile.TemporaryDirectory() as directory,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
    ):
        path = os.path.join(directory, "leg")
        receiver.bind(path)
        sender.setblocking(False)
        fallen_back: list[bytes] = []
        route = DatagramRoute(
            sender, path, queued=lambda: 0, fallback=lambda data, address: fallen_back.append(data)
        )
        for i in range(10_000):  # a receiver that never reads fills up
            assert route.send(b"%d" % i)
            if fallen_back:
                break
        assert fallen_back == [b"%d" % i], "the receiver's queue never filled"
        assert receiver.recv(100) == b"0"  # the ones before went straight out


def test_a_closed_socket_loses_the_datagram(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = udp_pair
    route = DatagramRoute(
        sender, receiver.getsockname(), queued=lambda: 0, fallback=lambda data, address: None
    )
    sender.close()
    assert route.send(b"late") is False


def test_a_route_needs_a_datagram_socket() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream,
        pytest.raises(ValueError, match="UDP"),
    ):
        DatagramRoute(
            stream, ("127.0.0.1", 9), queued=lambda: 0, fallback=lambda data, address: None
        )


# -- resuming ------------------------------------------------------------------------------


async def test_resuming_refreshes_before_each_wake_up() -> None:
    state = {"value": 0}
    calls: list[int] = []

    def before() -> None:
        state["value"] += 1
        calls.append(state["value"])

    async def reader() -> list[int]:
        seen = []
        for _ in range(3):
            await asyncio.sleep(0)
            seen.append(state["value"])  # what it reads right after waking up
        return seen

    assert await resuming(reader(), before) == [2, 3, 4]
    assert calls == [1, 2, 3, 4]


async def test_resuming_passes_cancellation_and_errors_to_the_coroutine() -> None:
    handled: list[str] = []
    started = asyncio.Event()

    async def loop() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            handled.append("cancelled")  # aiortc's RTCP loop sends its BYE here
            await asyncio.sleep(0)
            handled.append("after")

    task = asyncio.ensure_future(resuming(loop(), lambda: None))
    await started.wait()
    task.cancel()
    await task  # the coroutine swallowed the cancellation, as aiortc's loop does
    assert handled == ["cancelled", "after"]

    async def failing() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await resuming(failing(), lambda: None)
