"""Counts to every local socket of a room, within a CPU budget (docs/protocol.md, counts).

A room's counts arrive from the statekeeper at most every 250 ms. Writing one to each of
tens of thousands of sockets costs a few microseconds per socket, so a large room's
delivery is cut into rounds of slices: a slice writes to sockets in order until it used
`SLICE_S` of CPU time (the process's, so a busy machine preempting the edge does not count),
then the next slice waits long enough that delivery uses at most `CPU_SHARE` of a core;
joins and everything else run in between. When the edge did not use the last pause for
other work and no client arrived meanwhile (no connection accepted, no socket opened: the
storm is over), the next slice follows at once, so the last count reaches every socket
promptly. (The CPU test alone is not enough: on a host whose cores are all busy the edge
gets a fraction of one, so its joins use little of its pauses although they wait for it.)
A pause is the slice's length in wall time (its CPU time when that is longer) x (1 -
share) / share: on a host whose cores are all busy (several edges, the clients of a
benchmark) the edge gets a fraction of a core, its slice takes longer than its CPU, and
counts then take at most `share` of the CPU the edge actually gets, not of a core it does
not have; each socket's cadence falls with the audience and with the host's load, and the
joins keep the rest.
Within a round each socket gets the newest frame when its turn comes (latest wins), and at most
one; a frame that arrives during a round starts another round when this one is over, so
every socket ends with the final value. A small room is delivered in one slice, at once.

Active speaker frames (`edge.voice`) go out the same way, through a `CountsRounds` of their
own that calls each member's `deliver_voice` instead of `deliver_counts`.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from edge.metrics import EdgeMetrics

CPU_SHARE = 0.25
"""The share of the edge's time counts delivery may take while a storm goes on."""
SLICE_S = 0.005
"""The longest stretch of counts writes without a pause."""
_CHECK_EVERY = 128
"""Sockets written between two looks at the clock."""


class CountsMember(Protocol):
    def deliver_counts(self, frame: bytes, seq: int) -> bool:
        """Replace the socket's pending counts frame; True when it went out or waits."""


class CountsRounds:
    """The counts delivery of one room's local sockets (see the module docstring)."""

    def __init__(
        self,
        members: Mapping[str, CountsMember],
        metrics: EdgeMetrics,
        *,
        share: float = CPU_SHARE,
        slice_s: float = SLICE_S,
        clock: Callable[[], float] = time.process_time,
        wall: Callable[[], float] = time.monotonic,
        method: str = "deliver_counts",
        type_tag: str = "counts",
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.members = members
        self.metrics = metrics
        self.share = share
        self.slice_s = slice_s
        self.clock = clock
        self.wall = wall
        self.method = method
        """The member method each frame goes to: `deliver_counts(frame, seq)`, or another
        with that signature."""
        self.type_tag = type_tag
        self.frame = b""
        self.seq = -1
        self.rounds = 0
        self._round: list[CountsMember] | None = None
        self._next = 0
        self._paused_at = 0.0
        self._pause = 0.0
        self._opened = metrics.arrivals()
        """`metrics.arrivals()` when the last pause began."""
        self._again = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def delivering(self) -> bool:
        """True while a round is under way (or another one waits to start)."""
        return self._round is not None or self._timer is not None

    def offer(self, frame: bytes, seq: int) -> None:
        """A newer counts frame for every socket (a complete WebSocket frame)."""
        self.frame, self.seq = frame, seq
        if self.delivering:
            self._again = True
        else:
            self._start()

    def close(self) -> None:
        """Stop delivering (the room has no local sockets any more)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._round = None

    def _start(self) -> None:
        self._timer = None
        self._round = list(self.members.values())
        self._next = 0
        self._again = False
        self.rounds += 1
        self._slice()

    def _slice(self) -> None:
        self._timer = None
        members = self._round
        if members is None:
            return
        clock = self.clock
        start, wall_start = clock(), self.wall()
        opened = self.metrics.arrivals()
        busy = (
            start - self._paused_at >= self._pause / 2  # others used the last pause
            or opened != self._opened  # or sockets opened: joins go on
        )
        deadline = start + self.slice_s
        deliver = operator.methodcaller(self.method, self.frame, self.seq)
        k, end = self._next, len(members)
        delivered = 0
        while k < end:
            stop = min(end, k + _CHECK_EVERY)
            for member in members[k:stop]:
                if deliver(member):
                    delivered += 1
            k = stop
            if clock() >= deadline:
                break
        self.metrics.frame_out(self.type_tag, delivered)
        self._paused_at = clock()
        self.metrics.counts_cpu_s += self._paused_at - start
        self._opened = opened
        self._pause = (self._paused_at - start) * (1 - self.share) / self.share
        took = self.wall() - wall_start  # longer than the CPU when the edge was preempted
        pause = max(self._pause, took * (1 - self.share) / self.share) if busy else 0.0
        loop = asyncio.get_running_loop()
        if k < end:
            self._next = k
            self._timer = loop.call_later(pause, self._slice)
            return
        self._round = None
        if self._again:
            self._timer = loop.call_later(pause, self._start)


__all__ = ["CPU_SHARE", "SLICE_S", "CountsMember", "CountsRounds"]
