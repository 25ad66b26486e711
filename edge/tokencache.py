"""Participant tokens verified once per edge (a storm's shared audience token, say).

`VerifiedTokens.verify` is `access.tokens.verify_token` with a bounded memory of the
tokens that verified, keyed by the token string: a hit skips the signature and claim
checks but not the clock, so an expired (or not yet valid) token is refused as it would
be without the cache. Only tokens that verified are kept; a refused token is checked in
full every time. Revocation is not the edge's to check: the statekeeper refuses a join
whose token id it revoked (the `JoinRequested` event carries it), cached or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from access.tokens import DEFAULT_LEEWAY, Claims, verify_token
from schemas.client_errors import InvalidToken, TokenExpired

DEFAULT_CAPACITY = 1024
"""Tokens kept; past it the oldest entry is forgotten."""


class VerifiedTokens:
    """A bounded cache of verified participant tokens (see the module docstring)."""

    def __init__(
        self,
        secret_for: Callable[[str], str | None],
        capacity: int = DEFAULT_CAPACITY,
        *,
        leeway: float = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.secret_for = secret_for
        self.capacity = capacity
        self.leeway = leeway
        self.clock = clock
        self._claims: dict[str, Claims] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._claims)

    def verify(self, token: str) -> Claims:
        """The token's claims; `InvalidToken` or `TokenExpired` as `verify_token` raises."""
        now = self.clock()
        claims = self._claims.get(token)
        if claims is None:
            self.misses += 1
            claims = verify_token(token, self.secret_for, leeway=self.leeway, now=now)
            if len(self._claims) >= self.capacity:
                del self._claims[next(iter(self._claims))]
            self._claims[token] = claims
            return claims
        self.hits += 1
        if claims.expires_at <= now - self.leeway:
            del self._claims[token]
            raise TokenExpired("the token has expired")
        if claims.not_before > now + self.leeway or claims.issued_at > now + self.leeway:
            raise InvalidToken("the token is not yet valid")
        return claims


__all__ = ["DEFAULT_CAPACITY", "VerifiedTokens"]
