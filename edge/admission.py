"""Which connections an edge serves, and how many joins it has in flight (pure, no IO).

Every TCP connection is `open`ed when it is accepted and `close`d when it is gone (HTTP or
WebSocket alike: `edge.serving` opens it, `edge.serving` or, after an upgrade,
`edge.rtcsocket` closes it). Under both caps it is admitted and counted.
Over a cap it is refused: while the overflow lane has room it is held, uncounted, so that
its request can be answered with `TOO_MANY_CONNECTIONS` (HTTP 503, or a WebSocket error
frame and close 4019); with the lane full it is to be closed at once. Admitted plus held
connections never exceed ``max_connections + overflow``, which keeps the process below its
descriptor limit.

`JoinGate` bounds the joins (and resumes) one edge has in flight: from the `join` frame
until the statekeeper's answer (or its failure), by a limit that narrows when joins come
back slow and widens when they come back in time. Beyond that a join is answered at once with
`SERVER_BUSY` and a retry-after hint instead of queueing without bound behind a saturated
log: a queue that grows while the statekeeper is behind only makes every join in it later,
until each times out (the storms' `UNAVAILABLE` failures). The latency, not only the count,
is bounded because the right count depends on how fast the log and the statekeeper are: a
fixed cap either starves a healthy pipeline or lets a slow one queue past the timeout.

`UpgradeGate` refuses work earlier still, before a signaling socket exists: the queueing of
a saturated host is before the join (accepting, the upgrade, the client reading its 101),
where `JoinGate` sees nothing. While the edge's loop ran late lately, or it has many
sockets upgraded and not yet joined, a ``/rtc`` upgrade is answered with HTTP 503 and a
``Retry-After`` (`edge.serving`) instead of the 101, the socket and the session.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from typing import Literal

Peer = tuple[str, int]
"""A connection's remote (host, port): unique among the open connections of a listener."""

Scope = Literal["edge", "address"]


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is not served: the cap it hit (`scope`, `limit`), and whether it is
    `held` to be told so or must be closed at once."""

    scope: Scope
    limit: int
    held: bool

    @property
    def message(self) -> str:
        if self.scope == "edge":
            return f"this edge serves at most {self.limit} connections"
        return f"at most {self.limit} connections from one address"


class ConnectionLedger:
    """The open connections of one edge, by peer (see the module docstring)."""

    def __init__(self, max_connections: int, max_per_address: int, overflow: int) -> None:
        if max_connections < 1 or max_per_address < 1 or overflow < 0:
            raise ValueError("connection limits must be positive")
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.overflow = overflow
        self._admitted: set[Peer] = set()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._held: dict[Peer, Refusal] = {}

    @property
    def admitted(self) -> int:
        """Connections being served."""
        return len(self._admitted)

    @property
    def held(self) -> int:
        """Refused connections still open, waiting to be told why."""
        return len(self._held)

    def open(self, peer: Peer) -> Refusal | None:
        """Admit a new connection (None) or say why not. A peer already open is admitted."""
        if peer in self._admitted:
            return None
        if peer in self._held:
            return self._held[peer]
        scope: Scope | None = None
        if len(self._admitted) >= self.max_connections:
            scope = "edge"
        elif self._per_address[peer[0]] >= self.max_per_address:
            scope = "address"
        if scope is None:
            self._admitted.add(peer)
            self._per_address[peer[0]] += 1
            return None
        limit = self.max_connections if scope == "edge" else self.max_per_address
        held = len(self._held) < self.overflow
        refusal = Refusal(scope, limit, held)
        if held:
            self._held[peer] = refusal
        return refusal

    def refusal(self, peer: Peer | None) -> Refusal | None:
        """Why an open connection was refused, or None if it is served (or unknown)."""
        return None if peer is None else self._held.get(peer)

    def close(self, peer: Peer) -> None:
        """The connection is gone (idempotent)."""
        if self._held.pop(peer, None) is not None or peer not in self._admitted:
            return
        self._admitted.discard(peer)
        self._per_address[peer[0]] -= 1
        if self._per_address[peer[0]] <= 0:
            del self._per_address[peer[0]]


PROBE_JOINS = 16
"""The least window: joins always admitted, so that fresh answers keep measuring the
latency (with none admitted it could never come down)."""
CUT = 0.75
"""The window is multiplied by this when joins come back slow (at most once per
`max_wait`)."""
LATENCY_WEIGHT = 0.05
"""The weight of one answered join in the latency average the hint is drawn from."""
MAX_RETRY_AFTER = 3.0
"""The longest retry-after hint, in seconds."""


class JoinGate:
    """The joins one edge has in flight (see the module docstring), at most `window`: an
    AIMD concurrency limit, as TCP's congestion window. A join answered within `max_wait`
    seconds (from its `join` frame) widens the window by one while the window was in use
    (at least half full); one answered later narrows it by `CUT`, at most once per
    `max_wait` (one slow batch is one signal), never below `PROBE_JOINS` nor above `limit`.
    So the edge admits as many joins as the log and the statekeeper answer in time, and
    one slow join does not hold the others back.

    A refused join's hint is `retry_after` seconds, or the answered joins' recent latency
    when that is longer (up to `MAX_RETRY_AFTER`): the busier the edge, the later clients
    come back, so that refusing them does not become its own load. Clients add jitter.
    Pure: the caller passes the clock (`now`, seconds, monotonic).
    """

    def __init__(self, limit: int, max_wait: float, retry_after: float) -> None:
        if limit < 1 or max_wait <= 0 or retry_after <= 0:
            raise ValueError("a join gate needs limit >= 1, max_wait > 0 and retry_after > 0")
        self.limit = limit
        self.max_wait = max_wait
        self.retry_after = retry_after
        self.window = float(limit)
        """Joins admitted in flight now (the AIMD limit)."""
        self.refused = 0
        """Joins refused since the start."""
        self.latency = 0.0
        """Moving average of the answered joins' time in flight (seconds)."""
        self._started: dict[int, float] = {}
        """When each join in flight entered, by ticket."""
        self._tickets = itertools.count()
        self._cut_at = -math.inf

    @property
    def in_flight(self) -> int:
        return len(self._started)

    @property
    def retry_after_ms(self) -> int:
        hint = min(MAX_RETRY_AFTER, max(self.retry_after, self.latency))
        return max(1, round(hint * 1000))

    def why_busy(self) -> str | None:
        """Why a join now would be refused, or None when it would be admitted."""
        if len(self._started) < min(self.limit, max(PROBE_JOINS, int(self.window))):
            return None
        if self.window >= self.limit:
            return f"this edge has {self.limit} joins in flight"
        window, took = int(self.window), self.latency
        return f"this edge takes {window} joins at once now (they take {took:.1f} s)"

    def enter(self, now: float) -> int | None:
        """A ticket for one join in flight, or None (counted) when it is refused."""
        if self.why_busy() is not None:
            self.refused += 1
            return None
        ticket = next(self._tickets)
        self._started[ticket] = now
        return ticket

    def leave(self, ticket: int, now: float) -> None:
        """The join of `ticket` is answered (either way) or gone: its time adjusts the window."""
        started = self._started.pop(ticket, None)
        if started is None:
            raise RuntimeError(f"JoinGate.leave of ticket {ticket}, not in flight")
        took = max(0.0, now - started)
        self.latency += LATENCY_WEIGHT * (took - self.latency)
        if took > self.max_wait:
            if now - self._cut_at >= self.max_wait:
                self._cut_at = now
                self.window = max(float(PROBE_JOINS), self.window * CUT)
        elif 2 * (len(self._started) + 1) >= self.window:
            self.window = min(float(self.limit), self.window + 1.0)


UpgradeBusy = Literal["loop_lag", "unjoined"]
"""Why an upgrade is refused: the edge's loop ran late, or too many sockets wait to join."""


@dataclasses.dataclass(frozen=True, slots=True)
class UpgradeRefusal:
    """An upgrade refused while the edge is behind: why (`reason`, `message`) and the
    seconds the client is told to wait (`retry_after`; clients add jitter)."""

    reason: UpgradeBusy
    message: str
    retry_after: float

    @property
    def retry_after_ms(self) -> int:
        return max(1, round(self.retry_after * 1000))


class UpgradeGate:
    """Whether an edge takes a new signaling socket now (see the module docstring).

    Behind is: the loop ran more than `max_lag` seconds late lately (the caller measures
    it, `edge.rtcsocket.Liveness.behind`), or `max_unjoined` sockets are open and not yet
    joined (each is an upgrade done whose join has not come in or not been answered: a
    client that reads its 101 late, a join queued behind the loop). The hint is
    `retry_after`, or the lag when that is longer, up to `MAX_RETRY_AFTER`. Pure.
    """

    __slots__ = ("max_lag", "max_unjoined", "refused", "retry_after")

    def __init__(self, max_lag: float, max_unjoined: int, retry_after: float) -> None:
        if max_lag <= 0 or max_unjoined < 1 or retry_after <= 0:
            raise ValueError(
                "an upgrade gate needs max_lag > 0, max_unjoined >= 1 and retry_after > 0"
            )
        self.max_lag = max_lag
        self.max_unjoined = max_unjoined
        self.retry_after = retry_after
        self.refused: collections.Counter[str] = collections.Counter()
        """Upgrades refused since the start, by reason."""

    def check(self, lag: float, unjoined: int) -> UpgradeRefusal | None:
        """None to take the socket, or why not (counted): `lag` is how late the edge's
        loop ran lately (seconds), `unjoined` its open sockets not yet joined."""
        reason: UpgradeBusy
        if lag > self.max_lag:
            reason, message = "loop_lag", f"this edge runs {lag:.1f} s behind"
        elif unjoined >= self.max_unjoined:
            reason, message = "unjoined", f"this edge has {unjoined} sockets waiting to join"
        else:
            return None
        self.refused[reason] += 1
        hint = min(MAX_RETRY_AFTER, max(self.retry_after, lag))
        return UpgradeRefusal(reason, message, hint)


__all__ = [
    "CUT",
    "LATENCY_WEIGHT",
    "MAX_RETRY_AFTER",
    "PROBE_JOINS",
    "ConnectionLedger",
    "JoinGate",
    "Peer",
    "Refusal",
    "Scope",
    "UpgradeBusy",
    "UpgradeGate",
    "UpgradeRefusal",
]
