"""Named errors of the webhook sender and receiver."""

from __future__ import annotations

__all__ = ["InvalidWebhook", "WebhookConfigError", "WebhookError"]


class WebhookError(Exception):
    """Root of the webhook errors."""


class WebhookConfigError(WebhookError, ValueError):
    """A webhook endpoint's configuration is unusable: `what` names the setting."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class InvalidWebhook(WebhookError):
    """A received webhook failed verification: bad or missing signature, stale timestamp,
    or a body that is not a webhook event. `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
