"""Opaque roster pagination cursors: a pure, HMAC-signed codec.

A cursor pins a roster walk: the room, the room instance (its sid), the tier filter, the
log sequence of the snapshot, the key of the last row handed out, the total at the snapshot
and when it was issued. On the wire it is URL-safe base64 (no padding) of
``msgpack payload || HMAC-SHA256[:16]``. The room id is bound by the MAC but not carried, so
a cursor presented for another room fails verification exactly like an altered one
(`CursorInvalid`). The room sid is carried and signed: a cursor of a room that was deleted
and recreated under the same id is `CursorOfAnotherRoom` (`CURSOR_EXPIRED`), never a page
of the old room's roster.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
from typing import Any

import msgpack

from schemas.models import Tier
from statekeeper.errors import CursorExpired, CursorInvalid, CursorOfAnotherRoom

CURSOR_LIFETIME_MS = 10 * 60 * 1000
"""How long a cursor stays valid; the roster keeps departed rows at least this long."""

MAX_CURSOR_CHARS = 1024
"""Tokens longer than this are rejected before any work is done."""

_VERSION = 2
_MAC_BYTES = 16
_DOMAIN = b"stagecast.roster-cursor.v1\x00"
_TIER_CODES: dict[Tier | None, int] = {None: 0, "speaker": 1, "viewer": 2}
_TIERS_BY_CODE: dict[int, Tier | None] = {v: k for k, v in _TIER_CODES.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a roster walk stands: resume strictly after `after` at `snapshot_seq`."""

    room_id: str
    room_sid: str
    """The sid of the room instance the walk belongs to."""
    tier: Tier | None
    snapshot_seq: int
    after: tuple[int, int]
    total: int
    issued_at_ms: int


def _mac(secret: bytes, room_id: str, payload: bytes) -> bytes:
    msg = _DOMAIN + room_id.encode() + b"\x00" + payload
    return hmac.new(secret, msg, hashlib.sha256).digest()[:_MAC_BYTES]


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the cursor secret must be non-empty bytes")


def encode_cursor(c: PageCursor, secret: bytes) -> str:
    """Sign and encode a cursor as a compact URL-safe token (well under 1024 characters)."""
    _check_secret(secret)
    body = [
        _VERSION,
        c.room_sid,
        _TIER_CODES[c.tier],
        c.snapshot_seq,
        c.after[0],
        c.after[1],
        c.total,
        c.issued_at_ms,
    ]
    payload: bytes = msgpack.packb(body, use_bin_type=True)
    token = base64.urlsafe_b64encode(payload + _mac(secret, c.room_id, payload))
    return token.rstrip(b"=").decode("ascii")


def decode_cursor(
    token: str,
    secret: bytes,
    *,
    now_ms: int,
    lifetime_ms: int = CURSOR_LIFETIME_MS,
    room_id: str,
    room_sid: str,
    tier: Tier | None,
) -> PageCursor:
    """Verify and decode a token presented for `room_id` (now the instance `room_sid`).

    Raises `CursorInvalid` for anything not issued by us for this room and tier (garbage,
    altered bytes, another room, another tier, an older cursor format),
    `CursorOfAnotherRoom` for a genuine cursor of an earlier room of that id (deleted and
    recreated since), and `CursorExpired` for a genuine cursor older than `lifetime_ms`.
    Both of the latter carry the code `CURSOR_EXPIRED`: the client starts a new walk.
    """
    _check_secret(secret)
    raw = _unbase64(token)
    if len(raw) <= _MAC_BYTES:
        raise CursorInvalid("too short")
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, room_id, payload)):
        raise CursorInvalid("signature mismatch (altered, or issued for another room)")
    cursor = _parse(payload, room_id)
    if cursor.tier != tier:
        raise CursorInvalid(f"issued for tier {cursor.tier!r}, presented for {tier!r}")
    if cursor.room_sid != room_sid:
        raise CursorOfAnotherRoom(room_id, cursor.room_sid, room_sid)
    if now_ms - cursor.issued_at_ms > lifetime_ms:
        raise CursorExpired(cursor.issued_at_ms, lifetime_ms)
    return cursor


def _unbase64(token: str) -> bytes:
    if not isinstance(token, str) or not token or len(token) > MAX_CURSOR_CHARS:
        raise CursorInvalid("not a cursor token")
    try:
        data = token.encode("ascii")
        raw = base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise CursorInvalid("not a cursor token") from None
    # One token per cursor: refuse other alphabets and non-zero padding bits.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != data:
        raise CursorInvalid("not a cursor token")
    return raw


def _parse(payload: bytes, room_id: str) -> PageCursor:
    try:
        body: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception:  # signed by us, so only a change of secret or format gets here
        raise CursorInvalid("unreadable payload") from None
    if (
        not isinstance(body, list)
        or len(body) != 8
        or type(body[1]) is not str
        or any(type(v) is not int for v in body[:1] + body[2:])
        or body[0] != _VERSION
        or body[2] not in _TIERS_BY_CODE
    ):
        raise CursorInvalid("unknown cursor format")
    _v, room_sid, tier_code, snapshot_seq, rank, seq, total, issued_at_ms = body
    return PageCursor(
        room_id=room_id,
        room_sid=room_sid,
        tier=_TIERS_BY_CODE[tier_code],
        snapshot_seq=snapshot_seq,
        after=(rank, seq),
        total=total,
        issued_at_ms=issued_at_ms,
    )


__all__ = [
    "CURSOR_LIFETIME_MS",
    "MAX_CURSOR_CHARS",
    "PageCursor",
    "decode_cursor",
    "encode_cursor",
]
