"""Resume tokens: the signed session facts an edge hands a client so any edge can resume it.

A resume token is an HS256 JWT signed with the edge's api secret (`iss` = api key, so any
edge that knows the pair can verify it) with ``typ: "resume"``, the room and its sid, the
session sid, the participant id, its tier and grant, the session's connection `epoch`,
``pexp`` = when the participant token expires, and ``exp`` = the earlier of now +
`RESUME_TTL` and ``pexp``. It is never a participant token: `stagecast.verify_token`
refuses it (no `jti`/`nbf`), and this module refuses anything without ``typ: "resume"``.

A resume token works once: the statekeeper refuses a resume whose epoch is not the
session's current one, and each resume moves the epoch on (the `joined` reply carries a
token for the new epoch). A client whose resume is refused joins again with its
participant token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import msgspec
from jwt.warnings import InsecureKeyLengthWarning

from schemas.models import Grant, Tier

RESUME_TTL = 3600
"""Seconds a resume token stays valid (the statekeeper's grace decides the rest)."""
_TYP = "resume"
_MAX_CHARS = 8192


@contextlib.contextmanager
def _quiet_key_length() -> Iterator[None]:
    """A short dev secret is warned about once, when the edge starts, not per token."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield


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


def mint_resume_token(
    claims: ResumeClaims, api_key: str, api_secret: str, *, now: float | None = None
) -> str:
    """Sign the session facts for `RESUME_TTL` seconds, or until the participant token
    expires if that is sooner."""
    issued = int(time.time() if now is None else now)
    exp = issued + RESUME_TTL
    if claims.expires_at:
        exp = min(exp, claims.expires_at)
    payload = {
        "iss": api_key,
        "typ": _TYP,
        "room": claims.room_id,
        "rsid": claims.room_sid,
        "sid": claims.sid,
        "sub": claims.participant_id,
        "tier": claims.tier,
        "grant": {f.name: getattr(claims.grant, f.name) for f in msgspec.structs.fields(Grant)},
        "epoch": claims.epoch,
        "pexp": claims.expires_at,
        "iat": issued,
        "exp": exp,
    }
    with _quiet_key_length():
        return jwt.encode(payload, api_secret, algorithm="HS256")


def verify_resume_token(
    token: str, secret_for: Callable[[str], str | None], *, now: float | None = None
) -> ResumeClaims:
    """The session facts of a resume token signed by a known key, or `ResumeRefused`."""
    if not isinstance(token, str) or not token or len(token) > _MAX_CHARS:
        raise ResumeRefused("not a resume token")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        api_key = unverified.get("iss")
        secret = secret_for(api_key) if isinstance(api_key, str) else None
        if not secret:
            raise ResumeRefused("unknown api key")
        with _quiet_key_length():
            payload: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"require": ["exp", "iat"], "verify_exp": False},
            )
    except jwt.PyJWTError:
        raise ResumeRefused("malformed or forged resume token") from None
    if payload.get("typ") != _TYP:
        raise ResumeRefused("not a resume token")
    exp, pexp = payload.get("exp"), payload.get("pexp")
    at = time.time() if now is None else now
    if type(pexp) is int and 0 < pexp <= at:
        raise ResumeRefused("the participant token has expired; join with a new one")
    if type(exp) is not int or exp <= at:
        raise ResumeRefused("the resume token has expired")
    try:
        return _claims(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeRefused(f"bad resume claims: {exc}") from None


def _claims(payload: dict[str, Any]) -> ResumeClaims:
    room, sid, sub, tier = (payload[k] for k in ("room", "sid", "sub", "tier"))
    if not all(isinstance(v, str) and v for v in (room, sid, sub)):
        raise ValueError("room, sid and sub must be non-empty strings")
    epoch, pexp, room_sid = payload["epoch"], payload["pexp"], payload.get("rsid", "")
    if type(epoch) is not int or epoch < 1 or type(pexp) is not int or pexp < 0:
        raise ValueError("epoch must be a positive integer and pexp a time")
    if not isinstance(room_sid, str):
        raise TypeError("rsid must be a string")
    if tier not in ("speaker", "viewer"):
        raise ValueError("tier must be speaker or viewer")
    raw = payload["grant"]
    if not isinstance(raw, dict):
        raise TypeError("grant must be a map")
    names = {f.name for f in msgspec.structs.fields(Grant)}
    flags = {k: v for k, v in raw.items() if k in names}
    if not all(type(v) is bool for v in flags.values()):
        raise TypeError("grant flags must be booleans")
    return ResumeClaims(
        room_id=room,
        sid=sid,
        participant_id=sub,
        tier=tier,
        grant=Grant(**flags),
        epoch=epoch,
        expires_at=pexp,
        room_sid=room_sid,
    )


__all__ = [
    "RESUME_TTL",
    "ResumeClaims",
    "ResumeRefused",
    "mint_resume_token",
    "verify_resume_token",
]
