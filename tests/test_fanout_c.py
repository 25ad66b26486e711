"""The C fan-out (`rtc/_fanout.c` through `rtc.fanout`): built, byte for byte what the
Python path sends, and handing back every leg whose route does not hold.

Real libsrtp sessions (pylibsrtp's) and real UDP sockets on loopback; the ICE, DTLS and
sender objects a route is checked against are stand-ins in the unit tests (the C code
only compares them) and real aiortc peers in the last tests.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pylibsrtp
import pytest

from forwarder.router import Router
from rtc import fanout
from rtc._fanout import FastLeg, Rewriter
from rtc.aiortc_adapter import OutboundStream
from rtc.direct_send import srtp_pointers
from rtc.packets import CodecInfo, MediaPacket, RtpWriter, SequenceRewriter
from tests.polling import eventually
from tests.test_rtc_adapter import one_leg

KEY = bytes(range(30))
HISTORY = 128
CONNECTED = object()
"""Stands for aiortc's DTLS state CONNECTED (the C code compares identity)."""


def session(*, repeat: bool = False) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = repeat
    return pylibsrtp.Session(policy)


class Sender:
    _enabled = True


class Dtls:
    def __init__(self) -> None:
        self._state = CONNECTED


class Route:
    """What a leg's route is checked against, as stand-ins, and its queue."""

    def __init__(self) -> None:
        self.pair = object()
        self.nominated: dict[int, object] = {1: self.pair}
        self.dtls = Dtls()
        self.sender = Sender()
        self.queue = 0
        self.fallback: list[tuple[bytes, object]] = []

    def queued(self) -> int:
        return self.queue

    def fall_back(self, data: bytes, address: object) -> None:
        self.fallback.append((data, address))


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


@pytest.fixture
def sender_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def writer(ssrc: int, *, extensions: bool) -> RtpWriter:
    return RtpWriter(
        payload_type=96,
        ssrc=ssrc,
        mid="0" if extensions else None,
        mid_id=9 if extensions else None,
        abs_send_time_id=3 if extensions else None,
        audio_level_id=1 if extensions else None,
    )


def fast_leg(
    rtp: RtpWriter, srtp: pylibsrtp.Session, sock: socket.socket, to: Any, route: Route
) -> FastLeg:
    leg = FastLeg([None] * HISTORY)
    mid_element, abs_send_time_id, audio_level_id = rtp.extension_layout
    leg.configure(
        payload_type=96,
        ssrc=rtp._ssrc,
        mid_element=mid_element,
        abs_send_time_id=abs_send_time_id,
        audio_level_id=audio_level_id,
    )
    protect, context = srtp_pointers(srtp)
    leg.bind(
        session=srtp,
        protect=protect,
        context=context,
        sock=sock,
        address=to,
        queued=route.queued,
        fallback=route.fall_back,
        nominated=route.nominated,
        component=1,
        pair=route.pair,
        dtls=route.dtls,
        connected=CONNECTED,
        sender=route.sender,
    )
    return leg


def packet(seq: int, **changes: Any) -> MediaPacket:
    base = MediaPacket(
        sequence_number=seq,
        timestamp=(seq * 3000 + 0xFFFF0000) & 0xFFFFFFFF,  # wraps past 2^32
        marker=seq % 2,
        payload=bytes(range(seq % 7, 200)),
        ssrc=0x5151,
        payload_type=100,
    )
    return replace(base, **changes)


def abs_send_time(rtp_bytes: bytes) -> int:
    """The abs-send-time value in a leg's RTP bytes (id 3, after the 2-byte MID element)."""
    assert rtp_bytes[16 + 2] == 3 << 4 | 2
    return int.from_bytes(rtp_bytes[19:22], "big")


def test_the_extension_is_built_and_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path cannot silently vanish: where the tests run, it was built."""
    monkeypatch.delenv(fanout.SWITCH, raising=False)
    assert fanout.built()
    assert fanout.new_leg([None] * HISTORY) is not None
    assert type(fanout.new_rewriter(5)) is Rewriter
    monkeypatch.setenv(fanout.SWITCH, "0")
    assert fanout.new_leg([None] * HISTORY) is None
    assert type(fanout.new_rewriter(5)) is SequenceRewriter


def test_without_the_extension_every_leg_takes_python_and_the_log_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fanout, "_fanout", None)
    monkeypatch.setattr(fanout, "_import_error", "no module named rtc._fanout")
    monkeypatch.setattr(fanout, "_said", False)
    with caplog.at_level("WARNING", logger="rtc.fanout"):
        assert fanout.new_leg([None] * HISTORY) is None
        assert fanout.new_leg([None] * HISTORY) is None
    assert [r.getMessage() for r in caplog.records] == [
        "C fan-out not built (no module named rtc._fanout): every leg takes the Python path"
    ]


@pytest.mark.parametrize("extensions", [True, False])
def test_each_leg_gets_what_rtpwriter_and_pylibsrtp_make(
    receiver: socket.socket, sender_socket: socket.socket, extensions: bool
) -> None:
    """Three legs, five packets (marker, audio level, a 32-bit timestamp): each datagram
    is pylibsrtp's protection of RtpWriter's bytes for that leg, and the leg's history
    holds those bytes before SRTP."""
    to = receiver.getsockname()
    ssrcs = [0x11111111, 0x22222222, 0xFFFFFFFE]
    writers = [writer(ssrc, extensions=extensions) for ssrc in ssrcs]
    references = [session() for _ in ssrcs]
    route = Route()
    legs = [fast_leg(w, session(), sender_socket, to, route) for w in writers]
    stamps: array[int] = array("q")
    for seq in range(1000, 1005):
        level = (seq % 2 == 0, seq % 127) if seq != 1003 else None
        sent, others = fanout.fanout(
            packet(seq, audio_level=level), legs, [seq + i for i in range(3)], stamps
        )
        assert (sent, others) == (3, [])
        for i, (leg, rtp, reference) in enumerate(zip(legs, writers, references, strict=True)):
            kept = leg.history[(seq + i) % HISTORY]
            assert kept is not None
            send_time = abs_send_time(kept) if extensions else 0
            expected = rtp.serialize(packet(seq, audio_level=level), seq + i, send_time)
            assert kept == expected
            assert receiver.recv(2048) == reference.protect(expected)
    assert [leg.packets_sent for leg in legs] == [5, 5, 5]
    assert legs[0].octets_sent == sum(len(packet(seq).payload) for seq in range(1000, 1005))
    assert legs[0].last_rtp_timestamp == packet(1004).timestamp
    assert len(stamps) == 15 and list(stamps) == sorted(stamps)


@pytest.mark.parametrize("threads", [1, 2])
def test_split_over_two_threads_each_leg_gets_the_same_bytes(
    receiver: socket.socket, sender_socket: socket.socket, threads: int
) -> None:
    """20 legs (shared with the helper thread from 2 legs up): every datagram is
    pylibsrtp's protection of the leg's RTP bytes, refusals and stamps are counted per
    leg, and the thread count is what was set (tests/test_fanout_threads.py: order,
    legs coming and going, stopping)."""
    to = receiver.getsockname()
    route = Route()
    ssrcs = [0x1000 + i for i in range(20)]
    writers = [writer(ssrc, extensions=False) for ssrc in ssrcs]
    references = {ssrc: session() for ssrc in ssrcs}
    legs = [fast_leg(w, session(), sender_socket, to, route) for w in writers]
    was = fanout.threads()
    fanout.set_threads(threads)
    fanout.set_min_split(2)
    try:
        assert fanout.threads() == threads
        stamps: array[int] = array("q")
        for seq in range(50, 60):
            assert fanout.fanout(packet(seq), legs, [seq] * 20, stamps) == (20, [])
            arrived = {}
            for _ in legs:
                data = receiver.recv(2048)
                arrived[int.from_bytes(data[8:12], "big")] = data
            for ssrc, rtp in zip(ssrcs, writers, strict=True):
                expected = references[ssrc].protect(rtp.serialize(packet(seq), seq, 0))
                assert arrived[ssrc] == expected
        assert len(stamps) == 200
        assert fanout.fanout(packet(59), legs, [59] * 20, None) == (0, [])  # a replay
        assert [leg.packets_refused for leg in legs] == [1] * 20
        assert [leg.packets_sent for leg in legs] == [10] * 20
    finally:
        fanout.set_threads(was)
        fanout.set_min_split(fanout.MIN_SPLIT)
    with pytest.raises(ValueError, match="1 or 2"):
        fanout.set_threads(3)


def test_a_leg_whose_route_does_not_hold_is_handed_back(
    receiver: socket.socket, sender_socket: socket.socket
) -> None:
    """Each reason the Python path must send instead (ICE moved, DTLS gone, a tapped
    writer, a disabled sender, a queue, loss injection, RED, an unbound leg, a closed
    socket): the leg's index comes back and nothing of it reaches the wire."""
    to = receiver.getsockname()
    route = Route()
    leg = fast_leg(writer(7, extensions=False), session(), sender_socket, to, route)
    seq = 10

    def handed_back(**changes: Any) -> bool:
        nonlocal seq
        seq += 1
        result = fanout.fanout(packet(seq, **changes), [leg], [seq], None)
        return result == (0, [0])

    route.nominated[1] = object()
    assert handed_back()
    route.nominated[1] = route.pair
    route.dtls._state = object()
    assert handed_back()
    route.dtls._state = CONNECTED
    route.dtls._send_rtp = print  # type: ignore[attr-defined]
    assert handed_back()
    del route.dtls._send_rtp  # type: ignore[attr-defined]
    route.sender._enabled = False
    assert handed_back()
    route.sender._enabled = True
    route.queue = 1
    assert handed_back()
    route.queue = 0
    leg.diverted = True
    assert handed_back()
    leg.diverted = False
    assert handed_back(red=True)
    assert handed_back(payload=bytes(fanout_max_payload() + 1))

    # and with every reason gone, the next packet is the first to arrive
    assert fanout.fanout(packet(99), [leg], [99], None) == (1, [])
    assert int.from_bytes(receiver.recv(2048)[2:4], "big") == 99
    assert leg.packets_sent == 1 and sum(x is not None for x in leg.history) == 1

    leg.unbind()
    assert not leg.bound and handed_back()
    other = fast_leg(writer(7, extensions=False), session(), sender_socket, to, route)
    sender_socket.close()
    assert fanout.fanout(packet(100), [other], [100], None) == (0, [0])


def fanout_max_payload() -> int:
    from rtc import _fanout

    return _fanout.MAX_RTP_SIZE - 12


def test_a_refused_packet_is_counted_and_not_sent(
    receiver: socket.socket, sender_socket: socket.socket
) -> None:
    """libsrtp refuses to reuse an index (the same sequence number twice)."""
    leg = fast_leg(
        writer(7, extensions=False), session(), sender_socket, receiver.getsockname(), Route()
    )
    assert fanout.fanout(packet(5), [leg], [5], None) == (1, [])
    assert fanout.fanout(packet(5), [leg], [5], None) == (0, [])
    assert (leg.packets_sent, leg.packets_refused) == (1, 1)


def test_a_full_socket_hands_the_datagram_to_the_transport() -> None:
    """EAGAIN: the protected datagram goes to the transport's `sendto` (which queues it),
    and counts as sent; the ones before went straight out."""
    with (
        tempfile.TemporaryDirectory() as directory,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
    ):
        path = os.path.join(directory, "leg")
        receiver.bind(path)
        sender.setblocking(False)
        route = Route()
        srtp, reference = session(), session()
        leg = fast_leg(writer(7, extensions=False), srtp, sender, path, route)
        for seq in range(10_000):  # a receiver that never reads fills up
            assert fanout.fanout(packet(seq), [leg], [seq], None) == (1, [])
            if route.fallback:
                break
        assert route.fallback, "the receiver's queue never filled"
        ((data, address),) = route.fallback
        assert address == path
        rtp = writer(7, extensions=False)
        assert receiver.recv(2048) == reference.protect(rtp.serialize(packet(0), 0, 0))
        for earlier in range(1, seq):
            reference.protect(rtp.serialize(packet(earlier), earlier, 0))
        assert data == reference.protect(rtp.serialize(packet(seq), seq, 0))
        assert leg.packets_sent == seq + 1
        assert int.from_bytes(leg.history[seq % HISTORY][2:4], "big") == seq  # type: ignore[index]


def test_the_c_rewriter_does_what_the_python_one_does() -> None:
    """Random walks of in-order, reordered, repeated, stale and wrapping sequence numbers,
    padding skips and restarts: every answer of the C `Rewriter` is the Python one's."""
    rng = random.Random(12)
    for walk in range(200):
        first = rng.choice([0, 5, 0x7FFF, 0xFFFE, 0xFFFF, rng.randrange(1 << 16), -3, 1 << 20])
        c, python = Rewriter(first), SequenceRewriter(first)
        seq = rng.randrange(1 << 16)
        for _ in range(300):
            step = rng.random()
            if step < 0.05:
                c.restart()
                python.restart()
            elif step < 0.15:
                assert c.skip(seq) == python.skip(seq), walk
            else:
                assert c.rewrite(seq) == python.rewrite(seq), walk
            assert c.started == python.started
            seq = (seq + rng.choice([1, 1, 1, 1, 2, 0, -1, -3, 40, 0x8000])) & 0xFFFF
    with pytest.raises(ValueError, match="out of range"):
        Rewriter(0).rewrite(1 << 16)


def test_forward_rewrites_each_leg_then_sends_as_fanout(
    receiver: socket.socket, sender_socket: socket.socket
) -> None:
    """Two legs with their own sequences: each gets the packet as its rewriter numbers it,
    byte for byte what RtpWriter and pylibsrtp make; a packet older than a leg's restart
    is not sent on it; a leg whose route does not hold comes back with its number."""
    to = receiver.getsockname()
    route = Route()
    writers = [writer(0x1111, extensions=False), writer(0x2222, extensions=False)]
    references = [session(), session()]
    legs = [fast_leg(w, session(), sender_socket, to, route) for w in writers]
    rewriters = [Rewriter(100), Rewriter(0xFFFF)]
    for seq, expected in ((7, [100, 0xFFFF]), (8, [101, 0]), (6, None), (9, [102, 1])):
        result = fanout.forward(packet(seq), rewriters, legs, None)
        if expected is None:  # before both legs' first packet: stale
            assert result == (0, [])
            continue
        assert result == (2, [])
        for leg_seq, rtp, reference in zip(expected, writers, references, strict=True):
            rtp_bytes = rtp.serialize(packet(seq), leg_seq, 0)
            assert receiver.recv(2048) == reference.protect(rtp_bytes)
    rewriters[1].restart()  # (a leg waiting for a keyframe is not given to forward)
    route.nominated[1] = object()
    assert fanout.forward(packet(10), rewriters, legs, None) == (0, [(0, 103), (1, 2)])
    with pytest.raises(TypeError, match="Rewriter"):
        fanout.forward(packet(11), [SequenceRewriter(0)], legs[:1], None)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="one rewriter per leg"):
        fanout.forward(packet(11), rewriters, legs[:1], None)


def test_bad_input_gets_a_clear_error(sender_socket: socket.socket) -> None:
    leg = FastLeg([None] * HISTORY)
    with pytest.raises(ValueError, match="history"):
        FastLeg([None] * 3)
    with pytest.raises(ValueError, match="payload type"):
        leg.configure(
            payload_type=200, ssrc=1, mid_element=b"", abs_send_time_id=0, audio_level_id=0
        )
    route = Route()
    srtp = session()
    protect, context = srtp_pointers(srtp)
    with pytest.raises(ValueError, match="numeric address"):
        leg.bind(
            session=srtp,
            protect=protect,
            context=context,
            sock=sender_socket,
            address=("localhost", 9),
            queued=route.queued,
            fallback=route.fall_back,
            nominated=route.nominated,
            component=1,
            pair=route.pair,
            dtls=route.dtls,
            connected=CONNECTED,
            sender=route.sender,
        )
    with pytest.raises(TypeError, match="FastLeg"):
        fanout.fanout(packet(1), [object()], [1], None)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="out of range"):
        fanout.fanout(packet(1), [leg], [70000], None)
    with pytest.raises(ValueError, match="32 bits"):
        fanout.fanout(packet(1, timestamp=1 << 32), [leg], [1], None)


class _RouterLeg:
    """A router leg on a real outbound stream, as `forwarder.node.SubscriberLeg`."""

    def __init__(self, stream: OutboundStream) -> None:
        self.leg_id = "subscriber/track"
        self.stream = stream
        self.fast = stream.fast

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        return await self.stream.send(packet, sequence_number)


VP8 = CodecInfo(kind="video", mime_type="video/VP8", clock_rate=90000)
KEYFRAME = b"\x10\x00\x9d\x01\x2a" + bytes(60)


async def test_a_router_leg_goes_through_c_once_its_route_is_open() -> None:
    """Real peers: the first packet opens the direct path through Python (and binds the
    leg), the next ones go through C; NACKs are answered from the history C wrote, the
    sender report counts both paths, and loss injection takes the leg back to Python."""
    async with one_leg() as (transceiver, outbound, arrived):
        assert outbound.fast is not None
        router = Router(first_sequence=lambda: 1000)
        router.publish("t", VP8, request_keyframe=lambda: None)
        router.subscribe("t", _RouterLeg(outbound))
        for seq in range(1, 11):
            payload = KEYFRAME if seq == 1 else b"\x00\x00" + bytes([seq]) * 80
            media = MediaPacket(
                sequence_number=seq, timestamp=seq * 3000, marker=1, payload=payload,
                ssrc=42, payload_type=96,
            )  # fmt: skip
            assert await router.forward("t", media) == 1
        assert outbound.fast.bound and outbound.fast.packets_sent == 9
        assert outbound.packets_sent == 10
        await eventually(lambda: len(arrived) == 10, what="ten packets")
        assert [p.sequence_number for p in arrived] == list(range(1000, 1010))
        assert arrived[5].payload == b"\x00\x00" + bytes([6]) * 80

        await transceiver.sender._retransmit(1005)
        await eventually(lambda: len(arrived) == 11, what="the RTX retransmission")
        assert arrived[10].payload == (1005).to_bytes(2, "big") + arrived[5].payload

        stats = await transceiver.sender.getStats()
        (out,) = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert out.packetsSent == 10
        assert out.bytesSent == len(KEYFRAME) + 9 * 82

        outbound.drop = lambda seq: True
        media = replace(media, sequence_number=11, timestamp=33000)
        assert await router.forward("t", media) == 1  # counted as sent, never on the wire
        assert outbound.packets_dropped == 1 and outbound.fast.packets_sent == 9
        outbound.drop = None
        media = replace(media, sequence_number=12, timestamp=36000)
        assert await router.forward("t", media) == 1
        assert outbound.fast.packets_sent == 10
        await eventually(lambda: arrived[-1].sequence_number == 1011, what="the packet after")
