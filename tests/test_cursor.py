"""The roster cursor codec: round trip, signature, expiry, room, room instance and tier binding."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import ErrorCode
from schemas.models import Tier
from statekeeper.cursor import (
    CURSOR_LIFETIME_MS,
    MAX_CURSOR_CHARS,
    PageCursor,
    decode_cursor,
    encode_cursor,
)
from statekeeper.errors import CursorExpired, CursorInvalid, CursorOfAnotherRoom, StatekeeperError

SECRET = b"statekeeper-cursor-secret"
NOW = 1_780_000_000_000
CURSOR = PageCursor(
    room_id="webinar-2026-05",
    room_sid="RM_first1234",
    tier="viewer",
    snapshot_seq=1_234_567,
    after=(1, 1_234_000),
    total=100_005,
    issued_at_ms=NOW,
)


def decode(token: str, **overrides: object) -> PageCursor:
    args: dict[str, object] = {
        "now_ms": NOW + 1_000,
        "lifetime_ms": CURSOR_LIFETIME_MS,
        "room_id": CURSOR.room_id,
        "room_sid": CURSOR.room_sid,
        "tier": CURSOR.tier,
    }
    args.update(overrides)
    return decode_cursor(token, SECRET, **args)  # type: ignore[arg-type]


def test_round_trip_is_compact_and_url_safe() -> None:
    token = encode_cursor(CURSOR, SECRET)
    assert decode(token) == CURSOR
    assert len(token) < 96  # a room sid of 15 characters included
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(
    room_id=st.text(min_size=1, max_size=256),
    room_sid=st.text(min_size=1, max_size=256),
    tier=st.sampled_from([None, "speaker", "viewer"]),
    snapshot_seq=st.integers(0, 2**63 - 1),
    rank=st.integers(0, 1),
    seq=st.integers(0, 2**63 - 1),
    total=st.integers(0, 10**9),
    issued=st.integers(0, 2**62),
)
def test_round_trip_any_cursor(
    room_id: str,
    room_sid: str,
    tier: Tier | None,
    snapshot_seq: int,
    rank: int,
    seq: int,
    total: int,
    issued: int,
) -> None:
    cursor = PageCursor(room_id, room_sid, tier, snapshot_seq, (rank, seq), total, issued)
    token = encode_cursor(cursor, SECRET)
    assert len(token) < MAX_CURSOR_CHARS
    assert decode(token, now_ms=issued, room_id=room_id, room_sid=room_sid, tier=tier) == cursor


def test_any_altered_character_is_rejected() -> None:
    token = encode_cursor(CURSOR, SECRET)
    for i in range(len(token)):
        for replacement in "A_-z0":
            if replacement == token[i]:
                continue
            with pytest.raises(CursorInvalid) as caught:
                decode(token[:i] + replacement + token[i + 1 :])
            assert caught.value.code == ErrorCode.BAD_REQUEST


def test_forged_payload_is_rejected() -> None:
    """A client re-encoding a cursor with a bigger snapshot or key, keeping the old MAC."""
    token = encode_cursor(CURSOR, SECRET)
    forged = encode_cursor(dataclasses.replace(CURSOR, snapshot_seq=9), b"guessed")
    raw, forged_raw = (base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)) for t in (token, forged))
    spliced = base64.urlsafe_b64encode(forged_raw[:-16] + raw[-16:]).rstrip(b"=").decode()
    for bad in (forged, spliced):
        with pytest.raises(CursorInvalid):
            decode(bad)


@pytest.mark.parametrize(
    "garbage",
    ["", "x", "====", "not a cursor!", "AAAA", "é" * 10, "A" * (MAX_CURSOR_CHARS + 1), "A+/B"],
)
def test_garbage_is_rejected(garbage: str) -> None:
    with pytest.raises(CursorInvalid):
        decode(garbage)


def test_signed_nonsense_is_rejected() -> None:
    """Even correctly signed bytes must have the cursor's shape (a change of format)."""
    bodies: list[object] = [
        [3, "RM_first1234", 1, 1, 1, 1, 1, NOW],  # a future format version
        [1, 1, 1, 1, 1, 1, NOW],  # version 1: no room sid
        [2, "RM_first1234", 7, 1, 1, 1, 1, NOW],  # no such tier
        [2, "RM_first1234", 1, "x", 1, 1, 1, NOW],  # not a sequence number
        [2, 7, 1, 1, 1, 1, 1, NOW],  # a room sid that is not a string
        [2, "RM_first1234", 1, 1, 1, 1, 1],  # a field short
        {},
    ]
    for body in bodies:
        payload = msgpack.packb(body)
        msg = b"stagecast.roster-cursor.v1\x00" + CURSOR.room_id.encode() + b"\x00" + payload
        mac = hmac.new(SECRET, msg, hashlib.sha256).digest()[:16]
        token = base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()
        with pytest.raises(CursorInvalid, match="format"):
            decode(token, tier="speaker")


def test_expiry() -> None:
    token = encode_cursor(CURSOR, SECRET)
    assert decode(token, now_ms=NOW + CURSOR_LIFETIME_MS) == CURSOR
    with pytest.raises(CursorExpired) as caught:
        decode(token, now_ms=NOW + CURSOR_LIFETIME_MS + 1)
    assert caught.value.issued_at_ms == NOW
    assert caught.value.lifetime_ms == CURSOR_LIFETIME_MS
    assert caught.value.code == ErrorCode.CURSOR_EXPIRED
    assert isinstance(caught.value, StatekeeperError)
    with pytest.raises(CursorExpired):
        decode(token, now_ms=NOW + 61, lifetime_ms=60)


def test_wrong_room_or_tier_is_invalid() -> None:
    token = encode_cursor(CURSOR, SECRET)
    for overrides in (
        {"room_id": "another-room"},
        {"room_id": CURSOR.room_id + " "},
        {"tier": "speaker"},
        {"tier": None},
    ):
        with pytest.raises(CursorInvalid):
            decode(token, **overrides)
    with pytest.raises(CursorInvalid):  # another deployment's secret
        decode_cursor(
            token,
            b"other",
            now_ms=NOW,
            room_id=CURSOR.room_id,
            room_sid=CURSOR.room_sid,
            tier="viewer",
        )
    # An expired cursor for another room is still just invalid, never a hint about it.
    with pytest.raises(CursorInvalid):
        decode(token, room_id="another-room", now_ms=NOW + 10 * CURSOR_LIFETIME_MS)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_cursor(CURSOR, b"")
    with pytest.raises(ValueError):
        decode_cursor("AAAA", b"", now_ms=NOW, room_id="r", room_sid="RM_r", tier=None)


def test_cursor_of_a_deleted_and_recreated_room_is_expired() -> None:
    """The room id matches (the MAC holds) but the room instance does not: CURSOR_EXPIRED."""
    token = encode_cursor(CURSOR, SECRET)
    with pytest.raises(CursorOfAnotherRoom) as caught:
        decode(token, room_sid="RM_second567")
    assert caught.value.code == ErrorCode.CURSOR_EXPIRED
    assert (caught.value.room_id, caught.value.cursor_room_sid, caught.value.room_sid) == (
        CURSOR.room_id,
        CURSOR.room_sid,
        "RM_second567",
    )
    # Another room id is still just invalid, whatever its sid.
    with pytest.raises(CursorInvalid):
        decode(token, room_id="another-room", room_sid="RM_second567")
