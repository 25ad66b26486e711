"""`edge.tokencache.VerifiedTokens`: a token is verified once, its expiry still holds.

Pure: a fake clock, no IO."""

from __future__ import annotations

import pytest

from access.tokens import generate_token
from edge.tokencache import VerifiedTokens
from schemas.client_errors import InvalidToken, TokenExpired
from tests.edge_fixtures import API_KEY, API_SECRET, ROOM

KEYS = {API_KEY: API_SECRET}.get


def test_a_token_is_verified_once_and_its_claims_are_shared() -> None:
    tokens = VerifiedTokens(KEYS)
    token = generate_token(API_KEY, API_SECRET, room_id=ROOM, is_viewer=True)
    first = tokens.verify(token)
    again = tokens.verify(token)
    assert again is first and first.is_viewer and first.room_id == ROOM
    assert (tokens.misses, tokens.hits, len(tokens)) == (1, 1, 1)


def test_a_cached_token_still_expires() -> None:
    now = [1_000_000.0]
    tokens = VerifiedTokens(KEYS, leeway=0, clock=lambda: now[0])
    token = generate_token(API_KEY, API_SECRET, room_id=ROOM, ttl=60, now=now[0])
    claims = tokens.verify(token)
    now[0] = claims.expires_at - 1.0
    assert tokens.verify(token) is claims
    now[0] = float(claims.expires_at)
    with pytest.raises(TokenExpired):
        tokens.verify(token)
    assert len(tokens) == 0  # forgotten once expired
    with pytest.raises(TokenExpired):
        tokens.verify(token)  # and checked in full again


def test_refused_tokens_are_not_kept_and_the_cache_is_bounded() -> None:
    tokens = VerifiedTokens(KEYS, capacity=2)
    forged = generate_token(API_KEY, "another secret of 32 bytes or more!!", room_id=ROOM)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            tokens.verify(forged)
    assert len(tokens) == 0 and tokens.misses == 2
    minted = [generate_token(API_KEY, API_SECRET, room_id=ROOM, name=f"n{k}") for k in range(3)]
    for token in minted:
        tokens.verify(token)
    assert len(tokens) == 2
    tokens.verify(minted[0])  # the oldest was forgotten: verified in full again
    assert tokens.misses == 6 and tokens.hits == 0
