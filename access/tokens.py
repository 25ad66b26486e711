"""Access tokens: mint and verify the HS256 JWTs that admit participants and admins.

A participant token carries `iss` (the api key), `roomId`, `participantId` (= `sub`),
`isViewer`, `grant` (camelCase flags), `name`, `metadata`, `attributes`, `kind`, `exp`,
`nbf`, `iat` and `jti`. A token without `roomId` is *roomless* (domain-wide): it may live
at most `ROOMLESS_MAX_TTL` seconds and may not carry a privileged grant. An admin token
signs server API requests: its `admin` claim holds its grants (`roomCreate`, `roomList`,
`roomAdmin`, `room`: `access.admin`), it lives at most `ADMIN_MAX_TTL` seconds,
and it is never accepted as a participant token.

Verification checks the signature, the algorithm (HS256 only), every claim's type and the
wire's limits before the time window, so `TokenExpired` always means "a good token, too
old": the client should fetch a new one.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, cast, get_args

import jwt
import msgspec

from access.admin import AdminGrant, check, claim_of, grant_of
from schemas.client_errors import InvalidPermissions, InvalidToken, TokenExpired
from schemas.models import (
    ATTRIBUTES_BYTES,
    ATTRIBUTES_ITEMS,
    ID_CHARS,
    METADATA_BYTES,
    Grant,
    ParticipantKind,
)

ALGORITHM: Final = "HS256"
ROOMLESS_MAX_TTL: Final = 900
"""Longest life (seconds) of a roomless token."""
ADMIN_TOKEN_TTL: Final = 60
"""Default life (seconds) of an admin token: it signs one server API call."""
ADMIN_MAX_TTL: Final = 600
"""Longest life (seconds) of an admin token; longer ones are refused, so none replays long."""
MAX_TOKEN_CHARS: Final = 8192
"""Longest token a join frame carries (`schemas.client.Token`)."""
DEFAULT_LEEWAY: Final = 10
"""Clock skew (seconds) tolerated on `exp`, `nbf` and `iat`."""
_MAX_NUMERIC_DATE: Final = 2**53 - 1
_MALFORMED: Final = (jwt.PyJWTError, ValueError, RecursionError)
"""What PyJWT may raise on hostile input (it wraps most of it, but not in every version)."""

SecretLookup = Callable[[str], str | None] | Mapping[str, str]
"""Maps an api key to its secret (None or absent: unknown key)."""

_KINDS: Final = frozenset(get_args(ParticipantKind))

VIEWER_GRANT: Final = Grant(can_publish=False, can_publish_data=False)
"""The grant of a viewer-tier token minted without one: subscribe only, no media, no data."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


_GRANT_CLAIMS: Final = {f.name: _camel(f.name) for f in msgspec.structs.fields(Grant)}
"""Grant field -> token claim (`can_publish_data` -> `canPublishData`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """What a verified participant token says. `room_id` None: a roomless token."""

    api_key: str
    room_id: str | None
    participant_id: str | None
    name: str
    is_viewer: bool
    grant: Grant
    metadata: str
    attributes: dict[str, str]
    kind: ParticipantKind
    expires_at: int
    not_before: int
    issued_at: int
    token_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class AdminClaims:
    """What a verified admin token says: whose it is, what it allows and until when."""

    api_key: str
    grant: AdminGrant
    expires_at: int
    issued_at: int
    token_id: str


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""What an id may not hold (as on the wire: `schemas.codec.NoControl`)."""

# --------------------------------------------------------------------------- claim checks
# Each raises TypeError or ValueError; minting lets them out, verifying turns them into
# InvalidToken.


def _text(value: object, what: str, *, max_chars: int | None = None) -> str:
    if type(value) is not str:
        raise TypeError(f"{what}: must be a string")
    if max_chars is not None and len(value) > max_chars:
        raise ValueError(f"{what}: longer than {max_chars} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what}: not valid Unicode text") from None
    if "\x00" in value:  # no store can hold it (the wire refuses it too: schemas.codec)
        raise ValueError(f"{what}: contains the forbidden character U+0000")
    return value


def _identity(value: object, what: str) -> str:
    text = _text(value, what, max_chars=ID_CHARS)
    if not text:
        raise ValueError(f"{what}: must not be empty")
    control = _CONTROL.search(text)
    if control is not None:
        raise ValueError(f"{what}: contains the forbidden character U+{ord(control.group()):04X}")
    return text


def _metadata(value: object) -> str:
    text = _text(value, "metadata")
    if len(text.encode()) > METADATA_BYTES:
        raise ValueError(f"metadata: larger than {METADATA_BYTES} bytes")
    return text


def _attributes(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError("attributes: must be a map of strings")
    if len(value) > ATTRIBUTES_ITEMS:
        raise ValueError(f"attributes: more than {ATTRIBUTES_ITEMS} entries")
    size = 0
    for k, v in value.items():
        size += len(_text(k, "attributes key").encode()) + len(_text(v, "attributes").encode())
    if size > ATTRIBUTES_BYTES:
        raise ValueError(f"attributes: larger than {ATTRIBUTES_BYTES} bytes")
    return dict(value)


def _kind(value: object) -> ParticipantKind:
    if type(value) is not str or value not in _KINDS:
        raise ValueError(f"kind: must be one of {sorted(_KINDS)}")
    return cast(ParticipantKind, value)


def _flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise TypeError(f"{what}: must be a boolean")
    return value


def _numeric_date(payload: Mapping[str, Any], claim: str) -> int:
    value = payload.get(claim)
    if type(value) is not int:
        raise TypeError(f"{claim}: must be an integer")
    if not 0 <= value <= _MAX_NUMERIC_DATE:
        raise ValueError(f"{claim}: out of range")
    return value


def _grant_from_claim(value: object, is_viewer: bool) -> Grant:
    """Read a `grant` claim; unknown flags are ignored, missing ones take the tier's default
    (`VIEWER_GRANT` for a viewer, `Grant()` for a speaker)."""
    if not isinstance(value, dict):
        raise TypeError("grant: must be an object")
    flags = {f: _flag(value[c], f"grant.{c}") for f, c in _GRANT_CLAIMS.items() if c in value}
    return msgspec.structs.replace(VIEWER_GRANT if is_viewer else Grant(), **flags)


# --------------------------------------------------------------------------- minting


def _now(now: float | None) -> int:
    return int(time.time() if now is None else now)


def _sign(claims: dict[str, Any], api_secret: str) -> str:
    token = jwt.encode(claims, api_secret, algorithm=ALGORITHM)
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(
            f"the token is {len(token)} characters, over the {MAX_TOKEN_CHARS} a join frame "
            "carries: put less in metadata or attributes"
        )
    return token


def _check_keys(api_key: str, api_secret: str, ttl: int) -> None:
    _identity(api_key, "api_key")
    if type(api_secret) is not str or not api_secret:
        raise ValueError("api_secret: must be a non-empty string")
    if type(ttl) is not int:
        raise TypeError("ttl: must be an integer number of seconds")
    if ttl <= 0:
        raise ValueError("ttl: must be positive")


def generate_token(
    api_key: str,
    api_secret: str,
    room_id: str | None = None,
    participant_id: str | None = None,
    name: str | None = None,
    is_viewer: bool = False,
    grant: Grant | None = None,
    metadata: str | None = None,
    attributes: Mapping[str, str] | None = None,
    kind: ParticipantKind = "standard",
    ttl: int = 3600,
    *,
    now: float | None = None,
) -> str:
    """Mint a participant token: an HS256 JWT signed with `api_secret`, valid `ttl` seconds.

    `room_id` None makes a roomless (domain-wide) token: `ttl` may then not exceed
    `ROOMLESS_MAX_TTL` and `grant` may not be privileged (`ValueError`). `participant_id`
    None lets the SDK make a unique id per session. `grant` defaults to `Grant()` for a
    speaker and to `VIEWER_GRANT` (no publishing, no data) for a viewer (`is_viewer`). Claims
    beyond the wire's limits (ids and names over 256 characters, metadata or attributes over
    64 KiB, a token over 8192 characters) raise `ValueError`; wrong types `TypeError`.
    """
    _check_keys(api_key, api_secret, ttl)
    if grant is None:
        grant = VIEWER_GRANT if is_viewer is True else Grant()
    if not isinstance(grant, Grant):
        raise TypeError("grant: must be a stagecast.Grant")
    if room_id is None:
        if ttl > ROOMLESS_MAX_TTL:
            raise ValueError(f"a roomless token lives at most {ROOMLESS_MAX_TTL} s, not {ttl}")
        if grant.privileged:
            raise ValueError(
                "a roomless token may not carry canModerate, canRecord, canHls or canLivestream"
            )
    issued = _now(now)
    claims: dict[str, Any] = {"iss": api_key}
    if room_id is not None:
        claims["roomId"] = _identity(room_id, "room_id")
    if participant_id is not None:
        claims["sub"] = claims["participantId"] = _identity(participant_id, "participant_id")
    claims |= {
        "isViewer": _flag(is_viewer, "is_viewer"),
        "grant": {c: getattr(grant, f) for f, c in _GRANT_CLAIMS.items()},
        "name": "" if name is None else _text(name, "name", max_chars=ID_CHARS),
        "metadata": "" if metadata is None else _metadata(metadata),
        "attributes": {} if attributes is None else _attributes(attributes),
        "kind": _kind(kind),
        "exp": issued + ttl,
        "nbf": issued,
        "iat": issued,
        "jti": secrets.token_urlsafe(16),
    }
    return _sign(claims, api_secret)


def generate_admin_token(
    api_key: str,
    api_secret: str,
    ttl: int = ADMIN_TOKEN_TTL,
    *,
    room_create: bool = False,
    room_list: bool = False,
    room_admin: bool = False,
    room: str | None = None,
    now: float | None = None,
) -> str:
    """Mint a short-lived admin token that signs server API calls within its grants.

    `room_create`: create and delete rooms; `room_list`: list rooms; `room_admin`: manage
    the participants, tracks, metadata and data of `room`, which it requires. A `room`
    scopes every grant to that one room. `ttl` defaults to 60 s and may not exceed
    `ADMIN_MAX_TTL` (600 s). A grant that allows nothing, `room_admin` without `room`, or a
    longer `ttl` raise `ValueError`.
    """
    _check_keys(api_key, api_secret, ttl)
    if ttl > ADMIN_MAX_TTL:
        raise ValueError(f"an admin token lives at most {ADMIN_MAX_TTL} s, not {ttl}")
    grant = AdminGrant(
        room_create=_flag(room_create, "room_create"),
        room_list=_flag(room_list, "room_list"),
        room_admin=_flag(room_admin, "room_admin"),
        room=None if room is None else _identity(room, "room"),
    )
    check(grant)
    issued = _now(now)
    claims = {
        "iss": api_key,
        "admin": claim_of(grant),
        "exp": issued + ttl,
        "nbf": issued,
        "iat": issued,
        "jti": secrets.token_urlsafe(16),
    }
    return _sign(claims, api_secret)


# --------------------------------------------------------------------------- verifying


def _verify_signature(token: object, lookup: SecretLookup) -> tuple[dict[str, Any], str]:
    """The signed payload of an HS256 token and its api key, or `InvalidToken`."""
    if type(token) is not str:
        raise InvalidToken("a token is a string")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"token longer than {MAX_TOKEN_CHARS} characters")
    try:
        unverified = jwt.decode_complete(token, options={"verify_signature": False})
    except _MALFORMED:
        raise InvalidToken("malformed token") from None
    alg = unverified["header"].get("alg")
    if alg != ALGORITHM:
        raise InvalidToken(f"algorithm {str(alg)[:32]!r} is not accepted (only {ALGORITHM})")
    api_key = unverified["payload"].get("iss")
    if type(api_key) is not str or not api_key or len(api_key) > ID_CHARS:
        raise InvalidToken("the token names no api key (iss)")
    secret = lookup.get(api_key) if isinstance(lookup, Mapping) else lookup(api_key)
    if not isinstance(secret, str) or not secret:
        raise InvalidToken("unknown api key")
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={
                "verify_exp": False,  # `_check_window` checks the times, against `now`
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise InvalidToken("bad signature") from None
    except _MALFORMED:
        raise InvalidToken("malformed token") from None
    return payload, api_key


def _times(payload: Mapping[str, Any]) -> tuple[int, int, int]:
    """(exp, nbf, iat), consistent with each other, or `InvalidToken`."""
    try:
        exp, nbf, iat = (_numeric_date(payload, c) for c in ("exp", "nbf", "iat"))
        _identity(payload.get("jti"), "jti")
    except (TypeError, ValueError) as exc:
        raise InvalidToken(str(exc)) from None
    if exp <= iat or exp <= nbf:
        raise InvalidToken("the token expires before it becomes valid")
    return exp, nbf, iat


def _check_window(exp: int, nbf: int, iat: int, leeway: float, now: float | None) -> None:
    at = time.time() if now is None else now
    if nbf > at + leeway or iat > at + leeway:
        raise InvalidToken("the token is not yet valid")
    if exp <= at - leeway:
        raise TokenExpired("the token has expired")


def _participant_claims(
    payload: Mapping[str, Any], api_key: str, times: tuple[int, int, int]
) -> Claims:
    def optional_id(claim: str) -> str | None:
        value = payload.get(claim)
        return None if value is None else _identity(value, claim)

    participant_id = optional_id("participantId")
    if payload.get("sub") != participant_id:
        raise ValueError("sub: must equal participantId")
    exp, nbf, iat = times
    is_viewer = _flag(payload.get("isViewer", False), "isViewer")
    return Claims(
        api_key=api_key,
        room_id=optional_id("roomId"),
        participant_id=participant_id,
        name=_text(payload.get("name", ""), "name", max_chars=ID_CHARS),
        is_viewer=is_viewer,
        grant=_grant_from_claim(payload.get("grant", {}), is_viewer),
        metadata=_metadata(payload.get("metadata", "")),
        attributes=_attributes(payload.get("attributes", {})),
        kind=_kind(payload.get("kind", "standard")),
        expires_at=exp,
        not_before=nbf,
        issued_at=iat,
        token_id=payload["jti"],
    )


def verify_token(
    token: str,
    api_secret_lookup: SecretLookup,
    *,
    leeway: float = DEFAULT_LEEWAY,
    now: float | None = None,
) -> Claims:
    """Verify a participant token and return its claims.

    `api_secret_lookup` maps the token's api key (`iss`) to its secret: a mapping or a
    callable returning None for an unknown key. Raises `InvalidToken` for anything but a
    well-formed HS256 token signed with that secret whose claims respect the wire's limits
    and the roomless rules, or that is not yet valid (beyond `leeway` seconds); raises
    `TokenExpired` when it is otherwise good but expired.
    """
    payload, api_key = _verify_signature(token, api_secret_lookup)
    if "admin" in payload or "typ" in payload:
        raise InvalidToken("an admin or resume token is not a participant token")
    times = _times(payload)
    try:
        claims = _participant_claims(payload, api_key, times)
    except (TypeError, ValueError) as exc:
        raise InvalidToken(str(exc)) from None
    if claims.room_id is None:
        if claims.grant.privileged:
            raise InvalidToken("a roomless token may not carry a privileged grant")
        if claims.expires_at - claims.issued_at > ROOMLESS_MAX_TTL + leeway:
            raise InvalidToken(f"a roomless token lives at most {ROOMLESS_MAX_TTL} s")
    _check_window(*times, leeway, now)
    return claims


def verify_admin_token(
    token: str,
    api_secret_lookup: SecretLookup,
    *,
    leeway: float = DEFAULT_LEEWAY,
    now: float | None = None,
) -> AdminClaims:
    """Verify an admin token and return its claims (api key, grant, times).

    Raises `InvalidToken` / `TokenExpired` as `verify_token` does, and for a token that
    lives longer than `ADMIN_MAX_TTL` or whose grants are malformed; `InvalidPermissions`
    for a valid token that is not an admin token (a participant token, or an unscoped
    ``admin: true`` token of earlier versions). What the grant allows is the caller's to
    check (`AdminGrant.refusal`).
    """
    payload, api_key = _verify_signature(token, api_secret_lookup)
    exp, _nbf, iat = times = _times(payload)
    claim = payload.get("admin")
    if not isinstance(claim, dict):
        raise InvalidPermissions(
            "not an admin token with grants (roomCreate, roomList, roomAdmin + room)"
        )
    try:
        grant = grant_of(claim)
    except (TypeError, ValueError) as exc:
        raise InvalidToken(str(exc)) from None
    if exp - iat > ADMIN_MAX_TTL + leeway:
        raise InvalidToken(f"an admin token lives at most {ADMIN_MAX_TTL} s")
    _check_window(*times, leeway, now)
    return AdminClaims(
        api_key=api_key, grant=grant, expires_at=exp, issued_at=iat, token_id=payload["jti"]
    )


__all__ = [
    "ADMIN_MAX_TTL",
    "ADMIN_TOKEN_TTL",
    "ALGORITHM",
    "DEFAULT_LEEWAY",
    "MAX_TOKEN_CHARS",
    "ROOMLESS_MAX_TTL",
    "VIEWER_GRANT",
    "AdminClaims",
    "AdminGrant",
    "Claims",
    "Grant",
    "SecretLookup",
    "generate_admin_token",
    "generate_token",
    "verify_admin_token",
    "verify_token",
]
