"""`stagecast webhooks`: one process delivering public events to every endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from typing import Any

import httpx

from roomlog.connect import NatsAuth, connect
from roomlog.natslink import NatsLink
from webhooks.endpoints import Endpoint
from webhooks.errors import WebhookConfigError
from webhooks.sender import EndpointSender, SenderSettings

__all__ = ["WebhooksConfig", "run_senders", "serve"]

log = logging.getLogger("stagecast.webhooks")


@dataclasses.dataclass(frozen=True, slots=True)
class WebhooksConfig:
    nats_url: str
    endpoints: tuple[Endpoint, ...]
    settings: SenderSettings
    nats_auth: NatsAuth | None = None

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise WebhookConfigError("webhook url", "no endpoint configured")


async def run_senders(config: WebhooksConfig, stop: asyncio.Event) -> list[EndpointSender]:
    """Deliver to every endpoint until `stop` is set (or all are disabled)."""
    nc = await connect(
        config.nats_url,
        name="stagecast-webhooks",
        link=NatsLink("webhooks", log),
        role="webhook",
        auth=config.nats_auth,
    )
    limits = httpx.Limits(max_connections=64 * len(config.endpoints))
    try:
        async with httpx.AsyncClient(
            timeout=config.settings.request_timeout, limits=limits
        ) as http:
            js = nc.jetstream()
            senders = [EndpointSender(js, http, e, config.settings) for e in config.endpoints]
            tasks = [asyncio.create_task(s.run()) for s in senders]
            stopping = asyncio.create_task(stop.wait())
            print(f"webhooks ready: {len(senders)} endpoint(s)", flush=True)
            try:
                pending: set[asyncio.Task[Any]] = {*tasks, stopping}
                while not stopping.done():
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        if task is not stopping:
                            task.result()  # a sender's failure ends the process
                    if pending == {stopping}:
                        log.error("every webhook endpoint is disabled; waiting to be stopped")
            finally:
                for task in [*tasks, stopping]:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            return senders
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def serve(config: WebhooksConfig) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_senders(config, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
