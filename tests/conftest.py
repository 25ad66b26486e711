"""Shared pytest fixtures.

Sections: NATS (a private nats-server per test, clients). Add new sections below with a
header comment; keep each fixture's teardown next to its setup.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from processes.natsserver import NatsServer
from tests.heartbeats import Heartbeats, watch_heartbeats

# --------------------------------------------------------------------------- NATS

NATS_CLIENT_OPTIONS: dict[str, object] = {
    "connect_timeout": 2,
    "reconnect_time_wait": 0.1,  # tests kill and restart the server: come back quickly
    "max_reconnect_attempts": -1,
}
"""Client options for tests (fault tests restart the server under a connected client)."""


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A started nats-server with JetStream, on free ports, storing under `tmp_path`."""
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """The URL of `nats_server`."""
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    """A client connected to `nats_server`, closed after the test."""
    client = await nats.connect(nats_url, **NATS_CLIENT_OPTIONS)
    try:
        yield client
    finally:
        # nats-py 2.16 raises ConnectionResetError from close() when it still holds unsent
        # data for a server that is gone (a test killed it); the client is closed anyway.
        with contextlib.suppress(ConnectionError):
            await client.close()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    """A JetStream context on `nc`."""
    return nc.jetstream()


@pytest.fixture
async def heartbeats(nc: NATS) -> Heartbeats:
    """Forwarder heartbeats on the test's NATS, recorded from the start of the test."""
    return await watch_heartbeats(nc)
