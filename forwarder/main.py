"""Wiring of one forwarder process: its NATS connection and the `ForwarderService`.

`running_forwarder` runs one in the current event loop (tests, `stagecast up` children
through `serve`); `serve` runs until SIGINT or SIGTERM. Run one with
``stagecast forwarder --nats-url nats://... [--id FW_x]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator

from aiortc import RTCConfiguration

from forwarder.relay import RELAY_LEASE_S, RELAY_REFRESH_S
from forwarder.service import ForwarderService
from processes.runtime import tune_gc
from roomlog.connect import RECONNECT_BUFFER, NatsAuth, connect
from roomlog.natslink import NatsLink
from rtc.aiortc_adapter import allow_loopback_candidates

log = logging.getLogger("stagecast.forwarder")


def new_forwarder_id() -> str:
    """A fresh forwarder id, ``FW_<urlsafe random>`` (usable in a subject token)."""
    return f"FW_{secrets.token_urlsafe(9)}"


@contextlib.asynccontextmanager
async def running_forwarder(
    nats_url: str,
    *,
    forwarder_id: str | None = None,
    heartbeat_interval: float = 1.0,
    configuration: RTCConfiguration | None = None,
    connect_timeout: float = 10.0,
    relay_refresh: float = RELAY_REFRESH_S,
    relay_lease: float = RELAY_LEASE_S,
    relay_give_up: float = 30.0,
    auth: NatsAuth | None = None,
) -> AsyncIterator[ForwarderService]:
    """Run a forwarder for the duration of the context; yields the started service.

    The connection is made here and nowhere else; on exit the service stops (every peer
    connection closed, a `stopping` heartbeat sent) and the connection is closed. Peer
    connections may use 127.0.0.1 when the host has nothing else
    (`allow_loopback_candidates`). The relay timings are `ForwarderService`'s (tests
    shorten them). `auth` holds the NKey/creds and TLS files for NATS.
    """
    allow_loopback_candidates()
    nc = await connect(
        nats_url,
        name="stagecast-forwarder",
        link=NatsLink("forwarder", log),
        role="forwarder",
        auth=auth,
        connect_timeout=connect_timeout,
        reconnect_buffer=RECONNECT_BUFFER,  # heartbeats and relay packets, as before
    )
    service: ForwarderService | None = None
    try:
        service = ForwarderService(
            nc,
            forwarder_id or new_forwarder_id(),
            heartbeat_interval=heartbeat_interval,
            configuration=configuration,
            relay_refresh=relay_refresh,
            relay_lease=relay_lease,
            relay_give_up=relay_give_up,
        )
        await service.start()
        yield service
    finally:
        try:
            if service is not None:
                await service.stop()
        finally:
            with contextlib.suppress(Exception):
                await nc.close()


async def serve(
    nats_url: str,
    *,
    forwarder_id: str | None = None,
    heartbeat_interval: float = 1.0,
    auth: NatsAuth | None = None,
) -> None:
    """Run a forwarder until SIGINT or SIGTERM, then stop it cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running_forwarder(
            nats_url, forwarder_id=forwarder_id, heartbeat_interval=heartbeat_interval, auth=auth
        ) as service:
            log.info("forwarder %s ready", service.forwarder_id)
            print(f"forwarder {service.forwarder_id} ready", flush=True)
            tune_gc()
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = ["new_forwarder_id", "running_forwarder", "serve"]
