"""Appends retried across a JetStream leader election, and one log line per write outage.

When the node holding a stream's leader dies, the surviving replicas elect a new leader in
a few seconds; meanwhile a publish to the stream gets no answer (a timeout) or "no
responders" (503), and a client whose own server died is reconnecting. Every append carries
a ``Nats-Msg-Id``, so repeating it with the same id is safe: the stream stores it once and
answers the first sequence (the duplicate window, `roomlog.log.DUPLICATE_WINDOW`, is far
longer than any retry). `RetryPolicy` says for how long and how often; `transient` says
which failures are worth it (an election, a reconnect) and which are not (a message the
stream refuses, a wrong expected sequence, a closed client).

`RetryBudget` keeps retries from amplifying an overload: every append of one process
draws its retries from one token bucket, refilled by a fraction of the confirmed appends
and a small floor per second (gRPC's retry throttling, Finagle's retry budget). When
JetStream is merely slow, every in-flight append times out at once; retrying each on its
own would add load exactly when the stream is saturated. An attempt that may time out
into a retry reserves its token before it is sent; with none left, the append is not sent
again: its one attempt waits for the ack until the deadline (patience instead of a resend:
the ack of a slow stream is late, not lost), and a failure ends it with `RetryBudgetSpent`
(the edge answers `SERVER_BUSY`: try again later). Reserving first means a short attempt
always has its retry paid: none is cut off half-way by others spending the tokens.

`WriteOutage` keeps the log quiet while a stream has no leader: one warning when appends
start failing, one line with how long it lasted when they work again, and the counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import nats.errors
import nats.js.errors

log = logging.getLogger("stagecast.roomlog")

_CLUSTER_UNAVAILABLE = 10008  # "JetStream system temporarily unavailable"


RETRY_DEADLINE = 15.0
"""Seconds an append keeps trying by default: after a SIGKILL of the stream leader, writes
resumed within 4.8-10.9 s (median 6.3 s, 10 runs) on a 3-node cluster on one machine
(`tests/test_replicas.py`): nats-server's own election time, which Stagecast cannot shorten."""


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long an append is retried with the same message id, and how often.

    `deadline` bounds the whole append (every attempt and every pause) in seconds; 0 makes
    one attempt only. Pauses double from `first_backoff` up to `max_backoff`.
    """

    deadline: float = RETRY_DEADLINE
    first_backoff: float = 0.05
    max_backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.deadline < 0 or self.first_backoff <= 0 or self.max_backoff < self.first_backoff:
            raise ValueError(
                "a retry policy needs deadline >= 0 and 0 < first_backoff <= max_backoff"
            )


NO_RETRY = RetryPolicy(deadline=0.0)
"""One attempt, the first failure raised."""


class RetryBudgetSpent(TimeoutError):
    """An append failed transiently and this process's retry budget is spent: the log is
    overloaded (or out for longer than the floor covers). Retrying later with the same
    message id is safe. A `TimeoutError`, as the failed attempt mostly is one."""

    def __init__(self, stream: str, cause: BaseException) -> None:
        super().__init__(
            f"appends to {stream} are failing ({type(cause).__name__}) and the retry budget "
            "is spent: the room log is overloaded, try again later"
        )
        self.stream = stream


@dataclasses.dataclass(slots=True)
class RetryBudget:
    """The retries one process may make, shared by all its appends (a retry token bucket).

    A retry costs one token; each confirmed append earns `ratio` of one; `floor_per_s`
    tokens come back every second whatever happens (so a leader election with little
    traffic is still ridden out); the bucket holds at most `capacity` (and starts full).
    Under a sustained slowdown the retries are thus at most `ratio` of the appends that
    get through plus the floor, instead of one per failed attempt. Pure: the caller passes
    the clock (`now`, seconds, monotonic).
    """

    ratio: float = 0.1
    floor_per_s: float = 10.0
    capacity: float = 100.0
    tokens: float = -1.0
    """Tokens now; negative at construction: start full."""
    refilled_at: float | None = None
    spent: int = 0
    """Retries granted."""
    denied: int = 0
    """Retries refused (the append failed at once instead)."""

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.floor_per_s < 0 or self.capacity < 1:
            raise ValueError("a retry budget needs ratio >= 0, floor_per_s >= 0, capacity >= 1")
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if self.refilled_at is not None and now > self.refilled_at:
            self.tokens = min(
                self.capacity, self.tokens + (now - self.refilled_at) * self.floor_per_s
            )
        if self.refilled_at is None or now > self.refilled_at:
            self.refilled_at = now

    def succeeded(self, now: float) -> None:
        """A confirmed append earns `ratio` of a retry."""
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def available(self, now: float) -> bool:
        """Whether a retry would be granted now (no token is taken)."""
        self._refill(now)
        return self.tokens >= 1.0 - 1e-9  # ten tenths make one, whatever the rounding

    def reserve(self, now: float) -> bool:
        """Take a token ahead for an attempt that may need a retry (False: none left, and
        the attempt should not count on one). Settle it with `release`."""
        if not self.available(now):
            return False
        self.tokens -= 1.0
        return True

    def release(self, *, used: bool) -> None:
        """Settle a reserved token: `used` for the retry it paid (counted in `spent`), or
        given back (the attempt needed none)."""
        if used:
            self.spent += 1
        else:
            self.tokens = min(self.capacity, self.tokens + 1.0)

    def try_retry(self, now: float) -> bool:
        """Take one retry's token, or False (counted in `denied`) when fewer than one is left."""
        if not self.available(now):
            self.denied += 1
            return False
        self.tokens -= 1.0
        self.spent += 1
        return True


def transient(exc: BaseException) -> bool:
    """True for a failure an election or a reconnect explains, worth retrying with the same id.

    A 503 "no responders" (`NoStreamResponseError`) is transient only for a stream known to
    exist (the caller checks that); a closed or draining client, a refused message (too big,
    wrong expected sequence, a bad subject) are not.
    """
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code == 503 or exc.err_code == _CLUSTER_UNAVAILABLE
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError)):
        return False
    return isinstance(
        exc,
        (
            TimeoutError,  # nats.errors.TimeoutError is one too
            nats.errors.OutboundBufferLimitError,  # disconnected, nothing buffered
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.UnexpectedEOF,
            nats.errors.NoRespondersError,
            ConnectionError,
        ),
    )


class WriteOutage:
    """The write state of one stream: one warning per outage, one line when it ends.

    `failed` is called for each transient failure an append is about to retry, `succeeded`
    after each confirmed append with the time its attempt started: an ack for an attempt
    made before the outage began (still in flight when it did) does not end the outage.
    Counters: `outages`, `retries`, `longest` (seconds).
    """

    def __init__(self, stream: str, logger: logging.Logger = log) -> None:
        self.stream = stream
        self.log = logger
        self.failing_since: float | None = None
        self.outages = 0
        self.retries = 0
        self.longest = 0.0
        self._retries_this_outage = 0

    def failed(self, exc: BaseException) -> None:
        self.retries += 1
        self._retries_this_outage += 1
        if self.failing_since is not None:
            return
        self.failing_since = time.monotonic()
        self.outages += 1
        self.log.warning(
            "appends to %s failing (%s: %s): the stream may be electing a leader; retrying "
            "with the same message ids, reported again when they work",
            self.stream,
            type(exc).__name__,
            exc,
        )

    def succeeded(self, attempted_at: float) -> None:
        since = self.failing_since
        if since is None or attempted_at < since:
            return
        self.failing_since = None
        lasted = time.monotonic() - since
        self.longest = max(self.longest, lasted)
        self.log.warning(
            "appends to %s work again after %.1f s (%d retries)",
            self.stream,
            lasted,
            self._retries_this_outage,
        )
        self._retries_this_outage = 0


async def pause(attempt: int, policy: RetryPolicy, deadline: float) -> bool:
    """Sleep before retry number `attempt` (0-based); False when `deadline` leaves no time."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    await asyncio.sleep(min(left, policy.max_backoff, policy.first_backoff * 2 ** min(attempt, 30)))
    return deadline - time.monotonic() > 0


__all__ = [
    "NO_RETRY",
    "RETRY_DEADLINE",
    "RetryBudget",
    "RetryBudgetSpent",
    "RetryPolicy",
    "WriteOutage",
    "pause",
    "transient",
]
