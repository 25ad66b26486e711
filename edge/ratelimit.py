"""Rate limiting: a token bucket, a flood detector on top of it, and the data byte budgets."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from edge.config import EdgeConfig


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; each frame takes one (or `cost`).

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

    def take(self, cost: float = 1.0) -> bool:
        """Take `cost` tokens; False (taking none) when fewer are left: over the limit."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= cost:
            self._tokens -= cost
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


@dataclasses.dataclass(frozen=True, slots=True)
class DataLimits:
    """Byte budgets of data messages, counted in bytes of the data frame.

    Per sender (a session, at the edge it sends through): `sender_bytes_per_s` sustained,
    `sender_burst_bytes` at once. Per room (on every edge, over the room's data channel as
    that edge receives it): `room_bytes_per_s` / `room_burst_bytes`.
    """

    sender_bytes_per_s: float = 64 * 1024
    sender_burst_bytes: int = 256 * 1024
    room_bytes_per_s: float = 256 * 1024
    room_burst_bytes: int = 1024 * 1024

    @classmethod
    def of(cls, config: EdgeConfig) -> DataLimits:
        """The budgets an edge's config sets."""
        return cls(
            sender_bytes_per_s=config.data_bytes_per_s,
            sender_burst_bytes=config.data_burst_bytes,
            room_bytes_per_s=config.room_data_bytes_per_s,
            room_burst_bytes=config.room_data_burst_bytes,
        )

    def sender_bucket(self) -> TokenBucket:
        return TokenBucket(self.sender_bytes_per_s, self.sender_burst_bytes)

    def room_bucket(self) -> TokenBucket:
        return TokenBucket(self.room_bytes_per_s, self.room_burst_bytes)


__all__ = ["DataLimits", "FloodGuard", "TokenBucket"]
