"""Receiving Stagecast webhooks in your backend: verify, then parse.

    receiver = stagecast.WebhookReceiver(os.environ["STAGECAST_WEBHOOK_SECRET"])
    event = receiver.receive(request_body, request_headers)  # raises InvalidWebhook

`receive` checks the Standard Webhooks signature (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) and the timestamp's age, then returns the body as a `WebhookEvent`.
Deliveries are at least once: use ``event.id`` (also the ``webhook-id`` header) to drop
duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import msgspec

from schemas.webhooks import (
    WebhookEvent,
    WebhookParticipant,
    WebhookRoom,
    WebhookTrack,
    decode_webhook,
)
from webhooks.errors import InvalidWebhook
from webhooks.signing import TOLERANCE, parse_secret, verify_livekit, verify_standard

__all__ = [
    "InvalidWebhook",
    "WebhookEvent",
    "WebhookParticipant",
    "WebhookReceiver",
    "WebhookRoom",
    "WebhookTrack",
]


class WebhookReceiver:
    """Verifies and parses webhooks signed with one endpoint's secret (``whsec_...``).

    `tolerance`: seconds a delivery's timestamp may differ from this clock (default 300).
    `api_key`/`api_secret`: also check the LiveKit-scheme ``Authorization`` token.
    A malformed secret raises `webhooks.errors.WebhookConfigError` (a `ValueError`).
    """

    def __init__(
        self,
        secret: str,
        *,
        tolerance: int = TOLERANCE,
        api_key: str | None = None,
        api_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (api_key is None) != (api_secret is None):
            raise ValueError("give both api_key and api_secret, or neither")
        self._key = parse_secret(secret)
        self.tolerance = tolerance
        self.api_key = api_key
        self.api_secret = api_secret
        self._clock = clock

    def receive(self, body: bytes | str, headers: Mapping[str, str]) -> WebhookEvent:
        """The verified event; `InvalidWebhook` for a bad signature, a stale timestamp, a
        missing header or a body that is not a webhook event."""
        raw = body.encode() if isinstance(body, str) else bytes(body)
        verify_standard(self._key, raw, headers, int(self._clock()), self.tolerance)
        if self.api_key is not None and self.api_secret is not None:
            authorization = next(
                (v for k, v in headers.items() if k.lower() == "authorization"), None
            )
            if authorization is None:
                raise InvalidWebhook("missing authorization header")
            verify_livekit(self.api_key, self.api_secret, raw, authorization)
        try:
            return decode_webhook(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidWebhook(f"not a webhook event: {exc}") from None
