"""Resume tokens: the signed session facts an edge hands a client so any edge can resume it.

A resume token is compact: ``base64url(body) "." base64url(tag)`` without padding, where
`body` is a msgpack array ``[1, api key, room, room sid, sid, participant id, tier, grant,
epoch, pexp, iat, exp]`` (the grant as `schemas.codec.pack_struct` bytes; ``pexp`` = when
the participant token expires, ``exp`` = the earlier of ``iat`` + `RESUME_TTL` and
``pexp``) and `tag` is the first 16 bytes of HMAC-SHA256 under the api key's secret over
a domain label and `body`. Any edge that knows the key pair verifies it; it is about a
fifth of a JWT's size and costs a few microseconds to mint or check. It is never a
participant token: `stagecast.verify_token` refuses it (not a JWT).

A resume token works once: the statekeeper refuses a resume whose epoch is not the
session's current one, and each resume moves the epoch on (the `joined` reply carries a
token for the new epoch). A client whose resume is refused joins again with its
participant token.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import msgpack

from schemas.codec import SchemaError, pack_struct, unpack_struct
from schemas.models import Grant, Tier

RESUME_TTL = 3600
"""Seconds a resume token stays valid (the statekeeper's grace decides the rest)."""
_FORMAT = 1
_LABEL = b"stagecast-resume\x00"
_TAG_BYTES = 16
_MAX_CHARS = 8192


class ResumeRefused(Exception):
    """The resume token is malformed, forged, expired or not a resume token (or the
    participant token it came from has expired)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ResumeClaims:
    room_id: str
    sid: str
    participant_id: str
    tier: Tier
    grant: Grant
    epoch: int
    """The session's connection epoch when the token was minted (1 after the join)."""
    expires_at: int
    """When the participant token the session joined with expires (seconds; 0 unknown)."""
    room_sid: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=64)
def _keyed(secret: str) -> hmac.HMAC:
    """The HMAC keyed with `secret` that has read the label: each tag starts from a copy
    (a join mints one; a fresh HMAC looks the digest up and sets the key up every time)."""
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256)


def _tag(secret: str, body: bytes) -> bytes:
    mac = _keyed(secret).copy()
    mac.update(body)
    return mac.digest()[:_TAG_BYTES]


def mint_resume_token(
    claims: ResumeClaims, api_key: str, api_secret: str, *, now: float | None = None
) -> str:
    """Sign the session facts for `RESUME_TTL` seconds, or until the participant token
    expires if that is sooner."""
    issued = int(time.time() if now is None else now)
    exp = issued + RESUME_TTL
    if claims.expires_at:
        exp = min(exp, claims.expires_at)
    fields = [
        _FORMAT,
        api_key,
        claims.room_id,
        claims.room_sid,
        claims.sid,
        claims.participant_id,
        claims.tier,
        pack_struct(claims.grant),
        claims.epoch,
        claims.expires_at,
        issued,
        exp,
    ]
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return f"{_b64(body)}.{_b64(_tag(api_secret, body))}"


def verify_resume_token(
    token: str, secret_for: Callable[[str], str | None], *, now: float | None = None
) -> ResumeClaims:
    """The session facts of a resume token signed by a known key, or `ResumeRefused`."""
    if not isinstance(token, str) or not token or len(token) > _MAX_CHARS:
        raise ResumeRefused("not a resume token")
    encoded_body, dot, encoded_tag = token.partition(".")
    if not dot or "." in encoded_tag:
        raise ResumeRefused("malformed or forged resume token")
    try:
        body, tag = _unb64(encoded_body), _unb64(encoded_tag)
        fields: Any = msgpack.unpackb(body, raw=False, use_list=True)
    except (binascii.Error, ValueError, msgpack.UnpackException):
        raise ResumeRefused("malformed or forged resume token") from None
    if not isinstance(fields, list) or len(fields) != 12 or fields[0] != _FORMAT:
        raise ResumeRefused("malformed or forged resume token")
    api_key = fields[1]
    secret = secret_for(api_key) if isinstance(api_key, str) else None
    if not secret:
        raise ResumeRefused("unknown api key")
    if not hmac.compare_digest(tag, _tag(secret, body)):
        raise ResumeRefused("malformed or forged resume token")
    claims, pexp, exp = _claims(fields)
    at = time.time() if now is None else now
    if 0 < pexp <= at:
        raise ResumeRefused("the participant token has expired; join with a new one")
    if exp <= at:
        raise ResumeRefused("the resume token has expired")
    return claims


def _claims(fields: list[Any]) -> tuple[ResumeClaims, int, int]:
    """(claims, pexp, exp) of a token whose tag checked out, or `ResumeRefused`."""
    _, _, room, room_sid, sid, sub, tier, grant, epoch, pexp, iat, exp = fields
    if not all(isinstance(v, str) and v for v in (room, sid, sub)):
        raise ResumeRefused("bad resume claims: room, sid and sub must be non-empty strings")
    if not isinstance(room_sid, str):
        raise ResumeRefused("bad resume claims: the room sid must be a string")
    if tier not in ("speaker", "viewer"):
        raise ResumeRefused("bad resume claims: tier must be speaker or viewer")
    if type(epoch) is not int or epoch < 1:
        raise ResumeRefused("bad resume claims: epoch must be a positive integer")
    if not all(type(v) is int and v >= 0 for v in (pexp, iat, exp)):
        raise ResumeRefused("bad resume claims: pexp, iat and exp must be times")
    if not isinstance(grant, bytes):
        raise ResumeRefused("bad resume claims: the grant must be bytes")
    try:
        flags = unpack_struct(grant, Grant)
    except SchemaError as exc:
        raise ResumeRefused(f"bad resume claims: grant: {exc}") from None
    claims = ResumeClaims(
        room_id=room,
        sid=sid,
        participant_id=sub,
        tier=tier,
        grant=flags,
        epoch=epoch,
        expires_at=pexp,
        room_sid=room_sid,
    )
    return claims, pexp, exp


__all__ = [
    "RESUME_TTL",
    "ResumeClaims",
    "ResumeRefused",
    "mint_resume_token",
    "verify_resume_token",
]
