"""`stagecast webhooks`: one process delivering public events to every endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from typing import Any

from roomlog.connect import NatsAuth, connect
from roomlog.natslink import NatsLink
from webhooks.endpoints import Endpoint
from webhooks.errors import WebhookConfigError
from webhooks.http import EndpointPool
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


def endpoint_pool(endpoint: Endpoint, settings: SenderSettings) -> EndpointPool:
    """One endpoint's connections: `max_connections` at once, each POST bounded by
    `request_timeout` (waiting for a free connection is not an attempt: no bound)."""
    return EndpointPool(
        endpoint.url,
        max_connections=settings.max_connections,
        timeout=settings.request_timeout,
        ssl_context=settings.ssl_context,
    )


async def _all_bound(senders: list[EndpointSender]) -> None:
    for sender in senders:
        await sender.bound.wait()


async def run_senders(config: WebhooksConfig, stop: asyncio.Event) -> list[EndpointSender]:
    """Deliver to every endpoint until `stop` is set (or all are disabled)."""
    nc = await connect(
        config.nats_url,
        name="stagecast-webhooks",
        link=NatsLink("webhooks", log),
        role="webhook",
        auth=config.nats_auth,
    )
    settings = config.settings
    try:
        async with contextlib.AsyncExitStack() as clients:
            js = nc.jetstream()
            senders: list[EndpointSender] = []
            for endpoint in config.endpoints:  # a pool each: a hung endpoint starves no other
                http = await clients.enter_async_context(endpoint_pool(endpoint, settings))
                senders.append(EndpointSender(js, http, endpoint, settings))
            tasks = [asyncio.create_task(s.run()) for s in senders]
            stopping = asyncio.create_task(stop.wait())
            ready = asyncio.create_task(_all_bound(senders))
            try:
                pending: set[asyncio.Task[Any]] = {*tasks, stopping, ready}
                while not stopping.done():
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        if task is ready:
                            print(f"webhooks ready: {len(senders)} endpoint(s)", flush=True)
                        elif task is not stopping:
                            task.result()  # a sender's failure ends the process
                    if pending == {stopping}:
                        log.error("every webhook endpoint is disabled; waiting to be stopped")
            finally:
                for task in [*tasks, stopping, ready]:
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
