"""`edge.counts.CountsRounds`: counts within a CPU budget, the final value everywhere.

A fake clock that moves 10 µs per socket written stands for the cost of a write."""

from __future__ import annotations

import asyncio

import pytest

from edge.config import EdgeConfig
from edge.counts import CPU_SHARE, CountsRounds
from edge.fanout import Fanout
from edge.metrics import EdgeMetrics
from roomlog.memory import MemoryRoomLog
from schemas.models import Grant
from stagecast.up import counts_share
from tests.memory_bus import MemoryBus, MemoryNats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Socket:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.frames: list[bytes] = []

    def deliver_counts(self, frame: bytes, seq: int) -> bool:
        self.clock.now += 10e-6
        self.frames.append(frame)
        return True


async def test_a_small_room_gets_its_counts_at_once() -> None:
    clock = Clock()
    sockets = {str(k): Socket(clock) for k in range(10)}
    rounds = CountsRounds(sockets, EdgeMetrics(), clock=clock)
    rounds.offer(b"c1", 1)
    assert not rounds.delivering and all(s.frames == [b"c1"] for s in sockets.values())
    rounds.offer(b"c2", 2)
    assert all(s.frames == [b"c1", b"c2"] for s in sockets.values())


async def test_a_large_room_is_delivered_in_slices_and_ends_with_the_final_value() -> None:
    clock = Clock()
    sockets = {str(k): Socket(clock) for k in range(2000)}  # 20 ms of writes
    metrics = EdgeMetrics()
    rounds = CountsRounds(sockets, metrics, share=0.25, slice_s=0.005, clock=clock)
    rounds.offer(b"c1", 1)
    assert rounds.delivering  # one slice went out; the rest waits its turn
    first_slice = sum(1 for s in sockets.values() if s.frames)
    assert 0 < first_slice < len(sockets)
    rounds.offer(b"c2", 2)  # mid-round: later sockets of this round get it already
    rounds.offer(b"c3", 3)  # and the round after it brings this one to everyone
    while rounds.delivering:
        await asyncio.sleep(0.001)
    for socket in sockets.values():
        assert socket.frames[-1] == b"c3"  # the final value, everywhere
        assert len(socket.frames) <= 2  # at most one per round
    assert rounds.rounds == 2
    assert metrics.frames_out["counts"] == sum(len(s.frames) for s in sockets.values())


class Preempted(Socket):
    """A write whose CPU (10 µs) is spread over 40 µs of wall time: the edge gets a quarter
    of a core on a host whose cores are all busy."""

    def __init__(self, clock: Clock, wall: Clock) -> None:
        super().__init__(clock)
        self.wall = wall

    def deliver_counts(self, frame: bytes, seq: int) -> bool:
        self.wall.now += 40e-6
        return super().deliver_counts(frame, seq)


SLICE_WRITES = 512
"""Sockets one 5 ms slice writes at 10 µs each (the clock is read every 128)."""


def at_most(elapsed: float, pause: float) -> int:
    """The most a round can write in `elapsed` seconds of the loop's time when each slice
    is followed by `pause`: the first slice, then one per pause that has passed. The loop's
    time is real (a loaded machine stretches it), so the bound follows it, not 100 ms."""
    return SLICE_WRITES * (1 + int(elapsed / pause))


async def delivered_after_a_few_turns(
    opening: bool, accepting: bool = False, preempted: bool = False
) -> tuple[int, float]:
    """Sockets written once the loop turned a few times after a large room's counts were
    offered, with the CPU clock standing still in the pauses (the edge had nothing else to
    run), and sockets opened (or only connections accepted) meanwhile or not; the edge
    `preempted` (its writes take 4x their CPU in wall time) or not. With the loop's time
    that passed (about 100 ms)."""
    clock, wall = Clock(), Clock()
    sockets = {
        str(k): Preempted(clock, wall) if preempted else Socket(clock) for k in range(20_000)
    }  # 200 ms of writes: 40 slices
    metrics = EdgeMetrics()
    rounds = CountsRounds(sockets, metrics, share=0.25, slice_s=0.005, clock=clock, wall=wall)
    loop = asyncio.get_running_loop()
    started = loop.time()
    rounds.offer(b"c1", 1)
    for _ in range(20):  # 100 ms: with 15 ms pauses, 7 slices at most
        if opening:
            metrics.sockets_opened += 1
        if accepting:
            metrics.connections_accepted += 1
        await asyncio.sleep(0.005)
    delivered = sum(1 for s in sockets.values() if s.frames)
    elapsed = loop.time() - started
    rounds.close()
    return delivered, elapsed


async def test_counts_keep_their_share_while_sockets_open_on_a_busy_host() -> None:
    # An edge starved of CPU by other processes uses little of its pauses, though its joins
    # wait for it: sockets opening tell it the storm goes on, so counts keep to their share.
    # With none opening, the rest of the round follows at once (the storm is over).
    assert (await delivered_after_a_few_turns(opening=False))[0] == 20_000
    delivered, elapsed = await delivered_after_a_few_turns(opening=True)
    assert delivered <= at_most(elapsed, 0.015) < 20_000, elapsed  # 15 ms pauses


async def test_a_preempted_edge_keeps_counts_to_its_share_of_the_cpu_it_gets() -> None:
    # On a host whose cores are all busy a slice of 5 ms of CPU takes 20 ms: its pause is
    # 3x that, so counts take a quarter of what the edge gets, and fewer go out meanwhile.
    fair, _ = await delivered_after_a_few_turns(opening=True)
    preempted, elapsed = await delivered_after_a_few_turns(opening=True, preempted=True)
    assert preempted < fair
    # ~100 ms of turns: the first slice and one 60 ms later (more when the loop ran late)
    assert preempted <= at_most(elapsed, 0.060) < at_most(elapsed, 0.015), elapsed


async def test_connections_accepted_count_as_clients_arriving() -> None:
    # An edge refusing upgrades (it is behind), or whose clients are too starved to send
    # theirs, opens no socket, but the storm goes on: counts must keep to their share then
    # too, or they take the CPU the joins (and, on a shared host, the clients) wait for.
    delivered, elapsed = await delivered_after_a_few_turns(opening=False, accepting=True)
    assert delivered <= at_most(elapsed, 0.015) < 20_000, elapsed


def test_the_share_is_a_fraction() -> None:
    with pytest.raises(ValueError):
        CountsRounds({}, EdgeMetrics(), share=0)


def test_edges_sharing_a_host_share_its_counts_budget() -> None:
    # `stagecast up` runs all its edges on one host: together they keep to CPU_SHARE of
    # each core, so six edges on two cores cannot give counts 1.5 cores between them.
    assert counts_share(1, cores=2) == CPU_SHARE
    assert counts_share(2, cores=2) == CPU_SHARE
    assert counts_share(6, cores=2) == pytest.approx(CPU_SHARE * 2 / 6)
    assert 6 * counts_share(6, cores=2) == pytest.approx(2 * CPU_SHARE)


class Member:
    """A local socket as the fan-out sees it (`edge.fanout.Member`)."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.participant_id = sid
        self.grant = Grant()
        self.counts: list[bytes] = []

    def deliver(self, frame: bytes, type_tag: str, seq: int | None) -> None:
        pass

    def deliver_counts(self, frame: bytes, seq: int) -> bool:
        self.counts.append(frame)
        return True

    def deliver_voice(self, frame: bytes, seq: int) -> bool:
        return True

    def room_ended(self, frame: bytes, reason: str) -> None:
        pass


async def test_an_edge_gives_each_room_its_configured_share() -> None:
    with pytest.raises(ValueError, match="counts_cpu_share"):
        EdgeConfig(nats_url="nats://x", api_key="k", api_secret="s", counts_cpu_share=0)
    bus = await MemoryBus.connect(MemoryNats(), MemoryRoomLog())
    fanout = Fanout(bus, EdgeMetrics(), counts_share=0.08)
    await fanout.add("room", Member("PA_a"))
    room = fanout.rooms["room"]
    assert room.counts.share == 0.08 and room.voice_rounds.share == 0.08
