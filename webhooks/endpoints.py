"""A webhook endpoint: where to POST, with which secret, and which events it wants."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from urllib.parse import urlsplit

from schemas.events import ParticipantJoinedEvent, ParticipantLeftEvent
from schemas.webhooks import EVENT_NAMES, PublicEventMessage, event_name
from webhooks.errors import WebhookConfigError
from webhooks.signing import parse_secret

__all__ = ["PARTICIPANTS", "Endpoint", "endpoints_from_options"]

PARTICIPANTS = ("speakers", "all")
"""Which participants' joins and leaves an endpoint gets: speakers only (the default) or
every participant, viewers included."""


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint. `events`: the event names it gets; `all_participants`: viewers'
    ``participant_joined``/``participant_left`` too (off: speakers only)."""

    url: str
    key: bytes
    events: frozenset[str] = EVENT_NAMES
    all_participants: bool = False

    @property
    def consumer(self) -> str:
        """Its durable consumer's name, derived from the URL (stable across restarts)."""
        return "webhook_" + hashlib.sha256(self.url.encode()).hexdigest()[:20]

    def wants(self, event: PublicEventMessage) -> bool:
        """Whether this endpoint gets `event` (pure)."""
        if event_name(event) not in self.events:
            return False
        if isinstance(event, ParticipantJoinedEvent | ParticipantLeftEvent):
            return self.all_participants or not event.participant.is_viewer
        return True


def _url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookConfigError("webhook url", f"not an http(s) URL: {url!r}")
    return url


def _events(spec: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in spec.split(",") if n.strip())
    unknown = names - EVENT_NAMES
    if unknown:
        raise WebhookConfigError(
            "webhook events",
            f"unknown {', '.join(sorted(unknown))}; known: {', '.join(sorted(EVENT_NAMES))}",
        )
    if not names:
        raise WebhookConfigError("webhook events", "names no event")
    return names


def _per_endpoint(what: str, values: Sequence[str], count: int, default: str) -> list[str]:
    if not values:
        return [default] * count
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise WebhookConfigError(
            what, f"given {len(values)} times for {count} endpoints (give it once or per URL)"
        )
    return list(values)


def endpoints_from_options(
    urls: Sequence[str],
    secrets: Sequence[str],
    events: Sequence[str] = (),
    participants: Sequence[str] = (),
) -> list[Endpoint]:
    """Endpoints from repeated options, matched by position (`WebhookConfigError` if not).

    `secrets` has one per URL; `events` (comma-separated names) and `participants`
    (``speakers`` or ``all``) are given once for every endpoint or once per URL.
    """
    if len(secrets) != len(urls):
        raise WebhookConfigError(
            "webhook secret", f"{len(secrets)} secrets for {len(urls)} URLs (one per URL)"
        )
    if len(set(urls)) != len(urls):
        raise WebhookConfigError("webhook url", "the same URL is given twice")
    count = len(urls)
    every = ",".join(sorted(EVENT_NAMES))
    event_specs = _per_endpoint("webhook events", events, count, every)
    who = _per_endpoint("webhook participants", participants, count, "speakers")
    endpoints: list[Endpoint] = []
    for url, secret, spec, kind in zip(urls, secrets, event_specs, who, strict=True):
        if kind not in PARTICIPANTS:
            raise WebhookConfigError("webhook participants", f"{kind!r}: speakers or all")
        endpoints.append(Endpoint(_url(url), parse_secret(secret), _events(spec), kind == "all"))
    return endpoints
