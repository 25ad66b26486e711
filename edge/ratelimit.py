"""Per-socket rate limiting: a token bucket, and a flood detector on top of it."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; each frame takes one.

    Pure apart from the clock, which is injectable for tests.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    @property
    def tokens(self) -> float:
        """Tokens left after the last `take` (not refilled until the next one)."""
        return self._tokens

    def take(self) -> bool:
        """Take one token; False when the bucket is empty (the frame is over the limit)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FloodGuard:
    """A token bucket that also says when a socket has been over its limit for too long.

    `admit()` returns True for a frame within the limit. `flooding` turns true once
    `close_after` frames were refused since the socket last stayed within its limit: the
    socket should then be closed (4008). A frame admitted on a token that just trickled in
    (the bucket empty again after it) does not count as staying within the limit, so a
    client hammering the edge cannot reset the count with the refill rate.
    """

    __slots__ = ("_bucket", "close_after", "refused_in_a_row")

    def __init__(self, bucket: TokenBucket, close_after: int) -> None:
        self._bucket = bucket
        self.close_after = close_after
        self.refused_in_a_row = 0

    def admit(self) -> bool:
        if self._bucket.take():
            if self._bucket.tokens >= 1.0:
                self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        return False

    @property
    def flooding(self) -> bool:
        return self.refused_in_a_row >= self.close_after


__all__ = ["FloodGuard", "TokenBucket"]
