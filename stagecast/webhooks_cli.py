"""`stagecast webhooks` and the webhook options `stagecast up` shares with it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webhooks.endpoints import Endpoint

ENV_URL = "STAGECAST_WEBHOOK_URL"
ENV_SECRET = "STAGECAST_WEBHOOK_SECRET"
DEFAULT_HORIZON = 24 * 3600.0


def add_webhook_options(parser: argparse.ArgumentParser) -> None:
    """The endpoint flags (each repeatable, matched by position)."""
    parser.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        help=f"an endpoint to POST public events to (repeatable; ${ENV_URL}, comma list)",
    )
    parser.add_argument(
        "--webhook-secret",
        action="append",
        default=[],
        help=f"its whsec_<base64> signing secret, one per URL (${ENV_SECRET}, comma list)",
    )
    parser.add_argument(
        "--webhook-events",
        action="append",
        default=[],
        help="comma list of event names it gets (default: all); once, or once per URL",
    )
    parser.add_argument(
        "--webhook-participants",
        action="append",
        default=[],
        choices=("speakers", "all"),
        help="participant_joined/left for speakers only (default) or all, viewers included",
    )
    parser.add_argument(
        "--webhook-horizon",
        type=float,
        default=DEFAULT_HORIZON,
        help="seconds an event is retried before it is given up (default 86400)",
    )


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def webhook_endpoints(
    args: argparse.Namespace, env: Mapping[str, str] = os.environ
) -> list[Endpoint]:
    """The endpoints of the flags, else of the environment (`WebhookConfigError` if bad)."""
    from webhooks.endpoints import endpoints_from_options

    urls = list(args.webhook_url) or _split(env.get(ENV_URL))
    secrets = list(args.webhook_secret) or _split(env.get(ENV_SECRET))
    if not urls and not secrets:
        return []
    return endpoints_from_options(urls, secrets, args.webhook_events, args.webhook_participants)


def webhook_child_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The filter flags `stagecast up` hands its webhook sender (URLs and secrets go in
    the environment, out of the process list)."""
    out: list[str] = []
    for spec in args.webhook_events:
        out += ["--webhook-events", spec]
    for who in args.webhook_participants:
        out += ["--webhook-participants", who]
    out += ["--webhook-horizon", str(args.webhook_horizon)]
    return tuple(out)


def webhook_child_env(
    args: argparse.Namespace, env: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """``STAGECAST_WEBHOOK_URL``/``_SECRET`` for the child (empty: no endpoint)."""
    urls = list(args.webhook_url) or _split(env.get(ENV_URL))
    secrets = list(args.webhook_secret) or _split(env.get(ENV_SECRET))
    if not urls and not secrets:
        return {}
    return {ENV_URL: ",".join(urls), ENV_SECRET: ",".join(secrets)}


def cmd_webhooks(args: argparse.Namespace, nats_url: str, key: str, secret: str) -> int:
    import asyncio

    from webhooks.delivery import Backoff
    from webhooks.errors import WebhookConfigError
    from webhooks.main import WebhooksConfig, serve
    from webhooks.sender import SenderSettings

    try:
        endpoints = webhook_endpoints(args)
        backoff = Backoff(base=args.webhook_retry_base, horizon=args.webhook_horizon)
        config = WebhooksConfig(
            nats_url=nats_url,
            endpoints=tuple(endpoints),
            settings=SenderSettings(api_key=key, api_secret=secret, backoff=backoff),
            nats_auth=args.nats_auth,
        )
    except (WebhookConfigError, ValueError) as exc:
        raise SystemExit(f"stagecast webhooks: {exc}") from None
    asyncio.run(serve(config))
    return 0
