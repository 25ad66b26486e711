"""Webhook signatures, both schemes a receiver may already speak (pure, no clock).

Standard Webhooks (https://www.standardwebhooks.com): headers ``webhook-id``,
``webhook-timestamp`` (seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``; the secret is written ``whsec_<base64>``.

LiveKit: content type ``application/webhook+json`` and ``Authorization`` a JWT (HS256,
issuer the API key, signed with the API secret) whose ``sha256`` claim is the base64
SHA-256 of the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

import jwt

from webhooks.errors import InvalidWebhook, WebhookConfigError

__all__ = [
    "LIVEKIT_CONTENT_TYPE",
    "MIN_SECRET_BYTES",
    "TOLERANCE",
    "header_id",
    "livekit_authorization",
    "parse_secret",
    "sign",
    "standard_headers",
    "verify_livekit",
    "verify_standard",
]

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 16
TOLERANCE = 300
"""Seconds a receiver accepts between a webhook's timestamp and its own clock."""
LIVEKIT_CONTENT_TYPE = "application/webhook+json"
JWT_TTL = 600
"""Seconds a LiveKit-scheme Authorization token is valid."""


def parse_secret(text: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (the prefix and padding may be left out).

    `WebhookConfigError` unless it is base64 of at least `MIN_SECRET_BYTES` bytes.
    """
    body = text.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookConfigError("webhook secret", "not whsec_<base64>") from None
    if len(key) < MIN_SECRET_BYTES:
        raise WebhookConfigError(
            "webhook secret", f"{len(key)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    return key


def header_id(event_id: str) -> str:
    """The ``webhook-id`` of an event: its id, percent-encoded where not printable ASCII
    (Stagecast's ids always are; a header cannot carry anything else)."""
    return quote(event_id, safe="!#$&'()*+,-./:;=?@[]^_`{|}~")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def standard_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


def body_sha256(body: bytes) -> str:
    """Base64 SHA-256 of a body: the LiveKit token's ``sha256`` claim."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def livekit_authorization(api_key: str, api_secret: str, body: bytes, now: int) -> str:
    """The LiveKit ``Authorization`` header value: a JWT carrying the body's SHA-256."""
    claims = {
        "iss": api_key,
        "nbf": now - 10,
        "exp": now + JWT_TTL,
        "sha256": body_sha256(body),
    }
    return jwt.encode(claims, api_secret, algorithm="HS256")


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise InvalidWebhook(f"missing {name} header")


def verify_standard(
    key: bytes, body: bytes, headers: Mapping[str, str], now: int, tolerance: int = TOLERANCE
) -> str:
    """Check a Standard Webhooks delivery; returns its ``webhook-id``.

    `InvalidWebhook` for a missing header, a timestamp more than `tolerance` seconds from
    `now`, or no matching ``v1`` signature.
    """
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidWebhook("webhook-timestamp is not an integer") from None
    if abs(now - timestamp) > tolerance:
        raise InvalidWebhook(f"stale webhook-timestamp ({now - timestamp} s off)")
    expected = sign(key, msg_id, timestamp, body).removeprefix("v1,")
    for candidate in _header(headers, "webhook-signature").split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return msg_id
    raise InvalidWebhook("no valid webhook-signature")


def verify_livekit(api_key: str, api_secret: str, body: bytes, authorization: str) -> None:
    """Check a LiveKit-scheme delivery's ``Authorization`` token against `body`.

    `InvalidWebhook` for a bad or expired token (PyJWT reads the clock), another issuer,
    or a body whose SHA-256 is not the one signed.
    """
    token = authorization.removeprefix("Bearer ").strip()
    try:
        claims = jwt.decode(
            token,
            api_secret,
            algorithms=["HS256"],
            issuer=api_key,
            options={"verify_iat": False},
            leeway=0,
        )
    except jwt.PyJWTError as exc:
        raise InvalidWebhook(f"bad Authorization token: {exc}") from None
    if not hmac.compare_digest(str(claims.get("sha256", "")), body_sha256(body)):
        raise InvalidWebhook("the body's sha256 is not the signed one")
