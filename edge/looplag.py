"""How far behind an edge's event loop has been lately, so liveness does not blame clients.

The liveness sweep (`edge.rtcsocket.Liveness`) takes a socket for dead when nothing was
heard from it for `timeout` seconds. But "heard" is when the edge's loop *read* the bytes:
while the loop is saturated (a join storm), a client's pong can sit unread in the kernel
for seconds, and the socket looks silent through no fault of its own. A probe timer
scheduled every `period` seconds measures how late it runs; `LoopLag` keeps those delays
for the last `window` seconds, and the sweep extends each socket's allowance by their sum
(`stalled`): silence is judged against the time the edge was actually listening.

Pure: the caller passes the clock (`now`, seconds, the loop's monotonic time).
"""

from __future__ import annotations

import collections


class LoopLag:
    """Recent delays of a periodic probe (see the module docstring)."""

    __slots__ = ("_delays", "_sum", "max_recent", "window")

    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError("the loop lag window must be positive")
        self.window = window
        self._delays: collections.deque[tuple[float, float]] = collections.deque()
        self._sum = 0.0
        self.max_recent = 0.0
        """The largest delay within the window (seconds), for `/metrics`."""

    def record(self, now: float, delay: float) -> None:
        """The probe due at `now - delay` ran at `now`."""
        if delay > 0:
            self._delays.append((now, delay))
            self._sum += delay
        self._expire(now)

    def recent(self, now: float, span: float) -> float:
        """The largest delay recorded in the last `span` seconds (at most `window`)."""
        cutoff, largest = now - span, 0.0
        for at, delay in reversed(self._delays):
            if at < cutoff:
                break
            largest = max(largest, delay)
        return largest

    def stalled(self, now: float) -> float:
        """Seconds the loop ran late in the last `window` seconds (summed delays)."""
        self._expire(now)
        return max(0.0, self._sum)

    def _expire(self, now: float) -> None:
        delays, cutoff = self._delays, now - self.window
        while delays and delays[0][0] < cutoff:
            self._sum -= delays.popleft()[1]
        if not delays:
            self._sum = 0.0  # no drift from float subtraction
        self.max_recent = max((d for _, d in delays), default=0.0)


__all__ = ["LoopLag"]
