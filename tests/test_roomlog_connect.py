"""The one NATS connect function (roomlog/connect.py) every service opens its link with."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.request
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from processes.natsserver import NatsServer
from roomlog.connect import RECONNECT_BUFFER, connect, nats_servers
from roomlog.errors import NatsUnreachable
from roomlog.natslink import LinkState, NatsLink
from statekeeper.main import StatekeeperConfig, running_statekeeper
from tests.polling import eventually

log = logging.getLogger("tests.connect")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_server_list_is_split_on_commas_and_trimmed() -> None:
    assert nats_servers(" nats://a:1, ,nats://b:2 ") == ["nats://a:1", "nats://b:2"]


async def test_a_statekeeper_started_without_nats_fails_with_nats_unreachable_not_a_hang(
    tmp_path: Path,
) -> None:
    config = StatekeeperConfig(
        nats_url=f"nats://127.0.0.1:{closed_port()}",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'sk.db'}",
        api_secret="secret-for-tests-secret-for-tests",
        connect_timeout=1.0,
    )
    with pytest.raises(NatsUnreachable) as raised:
        # The outer bound only keeps a regression from hanging the suite.
        async with asyncio.timeout(30):
            async with running_statekeeper(config):
                pass
    assert raised.value.url == config.nats_url and raised.value.timeout == 1.0


async def test_publishes_while_reconnecting_fail_at_once_unless_a_buffer_is_asked_for(
    nats_server: NatsServer,
) -> None:
    unbuffered_link = NatsLink("unbuffered", log)
    buffered_link = NatsLink("buffered", log)
    unbuffered = await connect(nats_server.url, name="unbuffered", link=unbuffered_link)
    buffered = await connect(
        nats_server.url, name="buffered", link=buffered_link, reconnect_buffer=RECONNECT_BUFFER
    )
    try:
        await nats_server.stop()
        await eventually(
            lambda: (
                unbuffered_link.state is not LinkState.CONNECTED
                and buffered_link.state is not LinkState.CONNECTED
            ),
            what="both links to notice the server is gone",
        )
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await unbuffered.publish("stagecast.test", b"x")
        await buffered.publish("stagecast.test", b"x")  # kept until the link is back
        await nats_server.start()
        await eventually(
            lambda: unbuffered.is_connected and buffered.is_connected,
            timeout=30,
            what="both links back",
        )
    finally:
        await unbuffered.close()
        await buffered.close()


async def test_a_link_closed_on_purpose_is_not_logged_as_lost(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    closed_link = NatsLink("closed", log)
    drained_link = NatsLink("drained", log)
    closed = await connect(nats_server.url, name="closed", link=closed_link)
    drained = await connect(nats_server.url, name="drained", link=drained_link)
    await closed.close()
    await drained.drain()
    assert closed_link.state is LinkState.CLOSED and drained_link.state is LinkState.CLOSED
    assert closed_link.disconnects == drained_link.disconnects == 0
    assert "link lost" not in caplog.text
    # A server that goes away is an outage, logged as one.
    lost_link = NatsLink("lost", log)
    lost = await connect(nats_server.url, name="lost", link=lost_link)
    try:
        await nats_server.stop()
        await eventually(lambda: lost_link.disconnects == 1, what="the link lost")
        assert "lost: NATS link lost; reconnecting" in caplog.text
    finally:
        await lost.close()


async def test_the_client_is_named_and_replies_come_to_its_role_inbox(
    nats_server: NatsServer,
) -> None:
    nc = await connect(
        nats_server.url, name="stagecast-edge-x", link=NatsLink("x", log), role="edge"
    )
    try:
        assert nc.new_inbox().startswith("_INBOX_edge.")
        connz = await asyncio.to_thread(_connz, nats_server)
        assert "stagecast-edge-x" in [c.get("name") for c in connz["connections"]]
    finally:
        await nc.close()


def _connz(server: NatsServer) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.monitor_url}/connz", timeout=5) as answer:
        found: dict[str, Any] = json.load(answer)
        return found
