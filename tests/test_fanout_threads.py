"""The C fan-out shared with its helper thread (`rtc.fanout.set_threads(2)`): every leg
gets every packet once and in order whichever thread sent it, legs may come and go
between packets, and the helper stops and is joined when asked.

Real libsrtp sessions and real UDP sockets on loopback (each leg its own receiving
socket), and real aiortc peers through the router in the last test.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pylibsrtp
import pytest

from forwarder.router import Router
from rtc import fanout
from rtc._fanout import FastLeg
from rtc.errors import BadFanoutThreads
from rtc.packets import CodecInfo, MediaPacket, RtpWriter
from tests.polling import eventually
from tests.test_fanout_c import HISTORY, Route, _RouterLeg, fast_leg, packet, session, writer
from tests.test_rtc_adapter import one_leg

BURST = 20
"""Packets sent before the receivers are read (well within a socket's buffer)."""


def os_threads() -> int:
    """This process's threads (the helper is a pthread that Python does not list)."""
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def restored() -> Iterator[None]:
    """The process's thread setting and `MIN_SPLIT` again afterwards (the helper
    stopped: it starts again with the next packet it can share)."""
    was = fanout.threads()
    try:
        yield
    finally:
        fanout.set_threads(1)
        fanout.set_threads(was)
        fanout.set_min_split(fanout.MIN_SPLIT)


@pytest.fixture
def shared(restored: None) -> None:
    """The helper on, sharing from 2 legs up."""
    fanout.set_threads(2)
    fanout.set_min_split(2)


class Subscriber:
    """One leg to its own receiving socket, with the libsrtp session that says what each
    of its datagrams must be."""

    def __init__(self, stack: contextlib.ExitStack, index: int, route: Route) -> None:
        self.receiver = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.settimeout(5)
        sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.route = route
        self.rtp: RtpWriter = writer(0x7000 + index, extensions=False)
        self.reference: pylibsrtp.Session = session()
        to = self.receiver.getsockname()
        self.leg: FastLeg = fast_leg(self.rtp, session(), sender, to, route)
        self.expected: list[bytes] = []

    def expect(self, seq: int) -> None:
        self.expected.append(self.reference.protect(self.rtp.serialize(packet(seq), seq, 0)))

    def check(self) -> None:
        """Every datagram expected arrived, once and in order, and nothing else."""
        got = [self.receiver.recv(2048) for _ in self.expected]
        assert [d[2:4] for d in got] == [e[2:4] for e in self.expected]  # the order first
        assert got == self.expected
        self.receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.receiver.recv(2048)
        self.receiver.settimeout(5)
        self.expected.clear()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    """24 legs; the last one's route is its own (the others share one)."""
    route = Route()
    with contextlib.ExitStack() as stack:
        yield [Subscriber(stack, i, route if i < 23 else Route()) for i in range(24)]


def send(subscribers: list[Subscriber], seq: int) -> None:
    legs = [s.leg for s in subscribers]
    assert fanout.fanout(packet(seq), legs, [seq] * len(legs), None) == (len(legs), [])
    for s in subscribers:
        s.expect(seq)


def test_every_leg_gets_every_packet_once_and_in_order(
    shared: None, subscribers: list[Subscriber]
) -> None:
    """24 legs in bursts of 20 packets, until the helper has sent legs in 3 bursts (at
    most 100 bursts): each receiver holds each packet once, in order, as pylibsrtp would
    have protected it, and the legs sent add up whichever thread sent them."""
    assert fanout.threads() == 2
    before = fanout.shared_legs()
    bursts_helped = 0
    seq = 0
    for _ in range(100):
        helped = fanout.shared_legs()[1]
        for _ in range(BURST):
            send(subscribers, seq)
            seq += 1
        for s in subscribers:
            s.check()
        bursts_helped += fanout.shared_legs()[1] > helped
        if bursts_helped == 3:
            break
    assert bursts_helped == 3, "the helper thread sent no leg"
    caller, helper = fanout.shared_legs()
    assert (caller - before[0]) + (helper - before[1]) == seq * len(subscribers)
    assert [s.leg.packets_sent for s in subscribers] == [seq] * len(subscribers)
    assert all(s.leg.history[(seq - 1) % HISTORY] is not None for s in subscribers)


def test_legs_may_come_and_go_between_packets(shared: None, subscribers: list[Subscriber]) -> None:
    """Within bursts, legs leave, come back and join, and one leg's route stops holding
    (handed back, not sent) then holds again: each receiver gets exactly the packets of
    the calls its leg was in, in order."""
    lone = subscribers[-1]  # the one leg with a route of its own
    own_route = lone.route
    seq = 0
    for burst in range(10):
        for k in range(BURST):
            members = subscribers[: 8 + (k * 7 + burst) % 17]  # 8 to 24 legs, changing
            if k % 5 == 4:
                members = members[::2]  # every other leg sits this packet out
            lone_in = lone in members
            if lone_in and k == 9:
                own_route.nominated[1] = object()  # ICE moved: the route does not hold
                legs = [s.leg for s in members]
                sent, others = fanout.fanout(packet(seq), legs, [seq] * len(legs), None)
                assert (sent, others) == (len(legs) - 1, [legs.index(lone.leg)])
                for s in members:
                    if s is not lone:
                        s.expect(seq)
                own_route.nominated[1] = own_route.pair
            else:
                send(members, seq)
            seq += 1
        for s in subscribers:
            s.check()


def test_the_helper_starts_with_a_shared_packet_and_stops_when_asked(
    restored: None, subscribers: list[Subscriber]
) -> None:
    """`set_threads(2)` starts nothing until a packet has enough legs to share (a process
    that never fans out wide has no helper thread); `set_threads(1)` ends the thread (the
    process has one thread fewer) and the fan-out goes on alone; three times over."""
    fanout.set_threads(1)
    alone = os_threads()
    try:
        for round_ in range(3):
            fanout.set_threads(2)
            fanout.set_min_split(len(subscribers) + 1)
            send(subscribers, round_ * 3)  # too few legs to share
            assert fanout.threads() == 2 and not fanout.helper_running()
            assert os_threads() == alone
            fanout.set_min_split(2)
            send(subscribers, round_ * 3 + 1)
            assert fanout.helper_running() and os_threads() == alone + 1
            fanout.set_threads(1)
            fanout.set_threads(1)  # idempotent
            assert fanout.threads() == 1 and not fanout.helper_running()
            assert os_threads() == alone
            before = fanout.shared_legs()
            send(subscribers, round_ * 3 + 2)
            assert fanout.shared_legs() == before  # sent alone
            for s in subscribers:
                s.check()
    finally:
        fanout.set_min_split(fanout.MIN_SPLIT)
    with pytest.raises(ValueError, match="from 2 legs up"):
        fanout.set_min_split(1)


VP8 = CodecInfo(kind="video", mime_type="video/VP8", clock_rate=90000)
KEYFRAME = b"\x10\x00\x9d\x01\x2a" + bytes(60)


@contextlib.asynccontextmanager
async def real_legs(count: int) -> AsyncIterator[list[tuple[Any, Any, list[Any]]]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(one_leg()) for _ in range(count)]


async def test_real_peers_through_the_router_with_the_helper(shared: None) -> None:
    """Four aiortc subscribers on one track: until the helper has sent legs (at most
    2,000 packets, one leaving after 100), each gets its packets in order, and a NACK is
    answered with RTX from the history the shared fan-out wrote."""
    async with real_legs(4) as legs:
        router = Router(first_sequence=lambda: 1000)
        router.publish("t", VP8, request_keyframe=lambda: None)
        for i, (_, outbound, _) in enumerate(legs):
            leg = _RouterLeg(outbound)
            leg.leg_id = f"subscriber{i}/track"
            router.subscribe("t", leg)

        def arrived_all(last: int) -> bool:
            """Each leg got its packets up to `last` (the fourth up to 100)."""
            counts = [len(arrived) for _, _, arrived in legs]
            return counts == [last, last, last, min(last, 100)]

        before = fanout.shared_legs()[1]
        seq = 0
        while seq < 2000 and (seq < 200 or fanout.shared_legs()[1] == before):
            seq += 1
            payload = KEYFRAME if seq == 1 else b"\x00\x00" + seq.to_bytes(2, "big") * 40
            media = MediaPacket(
                sequence_number=seq, timestamp=seq * 3000, marker=1, payload=payload,
                ssrc=42, payload_type=96,
            )  # fmt: skip
            await router.forward("t", media)
            if seq == 100:
                assert router.unsubscribe("t", "subscriber3/track")
            if seq % 20 == 0:
                await eventually(functools.partial(arrived_all, seq), what=f"packets to {seq}")
        assert fanout.shared_legs()[1] > before, "the helper thread sent no leg"
        await eventually(lambda: arrived_all(seq), what="every packet")
        for i, (_, outbound, arrived) in enumerate(legs):
            last = 100 if i == 3 else seq
            assert [p.sequence_number for p in arrived] == list(range(1000, 1000 + last))
            assert outbound.fast is not None and outbound.fast.bound

        transceiver, _, arrived = legs[0]
        lost = seq - 10  # within the leg's history (the last 128 packets)
        original = arrived[lost]
        await transceiver.sender._retransmit(1000 + lost)
        await eventually(lambda: len(arrived) == seq + 1, what="the RTX retransmission")
        assert arrived[-1].payload == (1000 + lost).to_bytes(2, "big") + original.payload


@pytest.mark.parametrize(
    ("value", "cores", "threads"),
    [("1", 4, 1), ("2", 1, 2), (" 2 ", 2, 2), ("auto", 1, 1), ("AUTO", 2, 2), ("auto", 8, 2)],
)
def test_the_setting_says_how_many_threads(value: str, cores: int, threads: int) -> None:
    assert fanout.threads_wanted(value, cores) == threads


def test_unset_is_auto_and_anything_else_is_refused() -> None:
    assert fanout.DEFAULT_THREADS == "auto"
    assert [fanout.threads_wanted(None, cores) for cores in (1, 2, 8)] == [1, 2, 2]
    for value in ("0", "3", "two", ""):
        with pytest.raises(BadFanoutThreads, match="1, 2 or auto") as caught:
            fanout.threads_wanted(value, 2)
        assert caught.value.value == value


def test_a_forked_child_starts_its_own_helper(shared: None, subscribers: list[Subscriber]) -> None:
    """A child forked while the helper runs has no helper thread, keeps the setting, and
    starts its own with its first packet it can share; every leg gets the child's packets."""
    send(subscribers, 0)
    assert fanout.helper_running()
    for s in subscribers:
        s.check()
    child = os.fork()
    if child == 0:  # the child: report through the exit code only
        code = 1
        try:
            if fanout.threads() == 2 and not fanout.helper_running():
                code = 2
                send(subscribers, 1)
                if fanout.helper_running():
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for s in subscribers:
        s.expect(1)
        s.check()
    assert fanout.helper_running()  # the parent's helper is untouched
