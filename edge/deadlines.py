"""Many deadlines on one loop timer, for the thousands of sockets an edge holds.

Each signaling socket has a deadline for its request head (`edge.serving`) and one for its
join (`edge.session`); almost every one is met and forgotten within milliseconds. As an
asyncio timer each costs a `TimerHandle` (a copied context, a Python `__lt__` per step
of every heap push and pop) in a heap that holds the 10 s deadlines of every socket of the
last 10 s: at 1,000 joins/s per edge, ~20,000 handles, cancelled ones included, so every
other timer of the loop pays for them too. `Deadlines` keeps them as ``(due, token)``
tuples in a heap of its own (compared in C) and one loop timer for the earliest; a
deadline met is a dictionary entry removed. A deadline fires up to `resolution` seconds
late, never early.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

RESOLUTION = 0.05
"""Seconds a deadline may fire late: deadlines due within it share the loop timer's call."""


class Deadlines:
    """Callbacks each called once at (or up to `resolution` after) its due time, unless
    cancelled first (see the module docstring). Runs on `loop`; an exception a callback
    raises goes to the loop's exception handler and the others still run."""

    __slots__ = ("_heap", "_live", "_loop", "_timer", "_timer_at", "_tokens", "resolution")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self._loop = loop
        self.resolution = resolution
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, Callable[[], object]] = {}
        """The callbacks not yet called or cancelled, by token (a cancelled deadline's
        heap entry stays until its time and is skipped then)."""
        self._tokens = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        """Deadlines pending (not called, not cancelled)."""
        return len(self._live)

    def add(self, seconds: float, callback: Callable[[], object]) -> int:
        """Call `callback` in `seconds`; returns the token that `cancel` takes."""
        token = next(self._tokens)
        due = self._loop.time() + seconds
        self._live[token] = callback
        heapq.heappush(self._heap, (due, token))
        if self._timer is None or due < self._timer_at - self.resolution:
            self._arm(due)
        return token

    def cancel(self, token: int) -> None:
        """Forget the deadline of `token` (a no-op once it was called or cancelled)."""
        self._live.pop(token, None)

    def close(self) -> None:
        """Forget every deadline and stop the timer."""
        self._live.clear()
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap, live = self._heap, self._live
        until = self._loop.time()
        while heap and heap[0][0] <= until:
            _, token = heapq.heappop(heap)
            callback = live.pop(token, None)
            if callback is None:
                continue  # cancelled
            try:
                callback()
            except Exception as exc:  # one socket's failure must not stop the others
                self._loop.call_exception_handler(
                    {"message": "a deadline's callback failed", "exception": exc}
                )
        while heap and heap[0][1] not in live:
            heapq.heappop(heap)  # cancelled ones at the front: no timer for them
        if heap and self._timer is None:
            self._arm(max(heap[0][0], until + self.resolution))


__all__ = ["RESOLUTION", "Deadlines"]
