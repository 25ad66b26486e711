"""What one POST's answer means for a delivery (pure: times and randomness come in).

2xx: delivered. 410 Gone: the endpoint is disabled. Anything else (another status, a
timeout, a refused connection): retried after an exponential backoff with jitter, until
the next attempt would start when the event is older than `horizon` seconds; then it is
given up (logged, and acknowledged so it stops holding its room back).
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["Backoff", "Verdict", "judge"]


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GIVE_UP = "give_up"
    DISABLE = "disable"


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry `n` (1-based): ``min(cap, base * 2**(n-1))`` scaled by a jitter
    factor in [0.5, 1), so endpoints coming back are not hit by every retry at once."""

    base: float = 1.0
    cap: float = 900.0
    horizon: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError("backoff needs 0 < base <= cap")
        if self.horizon <= 0:
            raise ValueError("the retry horizon must be positive")

    def delay(self, retry: int, unit: float) -> float:
        """The delay before retry `retry`; `unit` is a uniform random number in [0, 1)."""
        plain = min(self.cap, self.base * 2.0 ** min(retry - 1, 62))
        return plain * (0.5 + 0.5 * unit)


def judge(
    status: int | None, retry: int, elapsed: float, backoff: Backoff, unit: float
) -> tuple[Verdict, float]:
    """The verdict on an attempt that answered `status` (None: no answer) and the delay
    before the next attempt. `retry` counts the attempts made so far; `elapsed` is the
    event's age in seconds (since the stream stored it)."""
    if status is not None and 200 <= status < 300:
        return Verdict.DELIVERED, 0.0
    if status == 410:
        return Verdict.DISABLE, 0.0
    delay = backoff.delay(retry, unit)
    if elapsed + delay > backoff.horizon:
        return Verdict.GIVE_UP, 0.0
    return Verdict.RETRY, delay
