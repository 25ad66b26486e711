"""Admin tokens an edge has accepted, so that one cannot sign a second call on that edge.

Pure apart from the clock (injectable). Bounded: each entry lives until its token expires
(at most `access.tokens.ADMIN_MAX_TTL` plus the leeway); when `limit` unexpired tokens
are held, the one expiring first is forgotten (and counted in `evicted`), so a flood of
fresh tokens costs memory up to the limit and never more.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable


class SeenTokens:
    """Token ids (`jti`) of accepted admin tokens, each until its `exp` (see the module)."""

    def __init__(self, limit: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.evicted = 0
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._by_expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def first_use(self, token_id: str, expires_at: float) -> bool:
        """Record `token_id` and say whether it is its first use here (False: a replay)."""
        self._forget(self._clock())
        if token_id in self._expiry:
            return False
        while len(self._expiry) >= self.limit:
            _, oldest = heapq.heappop(self._by_expiry)
            del self._expiry[oldest]
            self.evicted += 1
        self._expiry[token_id] = expires_at
        heapq.heappush(self._by_expiry, (expires_at, token_id))
        return True

    def _forget(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            _, token_id = heapq.heappop(self._by_expiry)
            del self._expiry[token_id]


__all__ = ["SeenTokens"]
