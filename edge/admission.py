"""Which connections an edge serves: the per-edge and per-address caps (pure, no IO).

Every TCP connection is `open`ed when it is accepted and `close`d when it is gone (HTTP or
WebSocket alike: `edge.serving` opens it, `edge.serving` or, after an upgrade,
`edge.rtcsocket` closes it). Under both caps it is admitted and counted.
Over a cap it is refused: while the overflow lane has room it is held, uncounted, so that
its request can be answered with `TOO_MANY_CONNECTIONS` (HTTP 503, or a WebSocket error
frame and close 4019); with the lane full it is to be closed at once. Admitted plus held
connections never exceed ``max_connections + overflow``, which keeps the process below its
descriptor limit.
"""

from __future__ import annotations

import collections
import dataclasses
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


__all__ = ["ConnectionLedger", "Peer", "Refusal", "Scope"]
