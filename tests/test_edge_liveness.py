"""The edge's one liveness sweep, and frames written straight to the transport.

A real stack with a short liveness interval: a peer that never answers a ping is dropped
(and counted), a client that answers stays; a frame built once reaches many sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edge.config import EdgeConfig
from edge.metrics import EdgeMetrics
from edge.rtcsocket import Liveness
from schemas.client import CountsChanged, Join, JoinAccepted, Ping, Pong
from schemas.codec import encode
from stagecast.bench.wsclient import OP_BINARY, client_frame
from tests.edge_fixtures import ROOM, Stack, edge_stack
from tests.polling import eventually

HANDSHAKE = (
    b"GET /rtc HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@contextlib.asynccontextmanager
async def quick_liveness(tmp_path: Path) -> AsyncIterator[Stack]:
    async with edge_stack(tmp_path, liveness_interval=0.3, liveness_timeout=1.0) as stack:
        yield stack


async def raw_socket(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A signaling socket opened by hand: it answers nothing, pings included."""
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(HANDSHAKE)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def _metric(stack: Stack, name: str) -> int:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError(f"{name} not in /metrics")


async def test_a_peer_that_never_answers_a_ping_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stagecast.edge")
    async with quick_liveness(tmp_path) as stack:
        answering = await stack.connect()  # the websockets client answers pings
        reader, writer = await raw_socket(stack)
        try:
            seen = b""
            with contextlib.suppress(ConnectionError):
                while chunk := await asyncio.wait_for(reader.read(4096), 10.0):
                    seen += chunk  # never answered
            assert b"\x89\x00" in seen  # it was pinged before it was dropped
        finally:
            writer.close()
        assert (
            await eventually(
                lambda: _metric(stack, "stagecast_edge_liveness_drops_total"), what="the drop count"
            )
            == 1
        )
        # Well past the timeout, the client that answers is still served.
        await asyncio.sleep(1.5)
        reply = await answering.request(Ping(id=answering.next_id(), at=1))
        assert isinstance(reply, Pong)
        assert await _metric(stack, "stagecast_edge_liveness_drops_total") == 1
        drops = [r.getMessage() for r in caplog.records if "silent for" in r.getMessage()]
        assert len(drops) == 1, drops
        assert drops[0].startswith("dropped 1 signaling socket(s) silent for 1 s (no pong")
        assert drops[0].endswith("; 1 open")


async def test_the_edges_own_stall_is_not_taken_for_a_clients_silence(tmp_path: Path) -> None:
    """The edge's loop (this test's loop) stalls well past the liveness timeout: the
    client's pong could not have been read meanwhile, so the socket is not dropped."""
    async with quick_liveness(tmp_path) as stack:
        client = await stack.join("patient")
        await client.sync()
        time.sleep(2.5)  # noqa: ASYNC251 (the stall itself: nothing on this loop runs)
        await asyncio.sleep(1.5)  # several sweeps, and pings, after it
        reply = await client.request(Ping(id=client.next_id(), at=1))
        assert isinstance(reply, Pong)
        assert await _metric(stack, "stagecast_edge_liveness_drops_total") == 0


async def test_one_audience_token_and_counts_built_once_reach_every_viewer(
    tmp_path: Path,
) -> None:
    async with edge_stack(tmp_path) as stack:
        token = stack.token(None, ROOM, viewer=True)  # shared: verified once by the edge
        viewers = []
        for _ in range(5):
            viewer = await stack.connect()
            reply = await viewer.request(Join(id=viewer.next_id(), token=token))
            assert isinstance(reply, JoinAccepted) and reply.participant.is_viewer, reply
            viewers.append(viewer)
        for viewer in viewers:
            await viewer.expect(CountsChanged, lambda m: m.counts.viewer == 5)


def test_the_liveness_sweep_needs_an_interval_below_its_timeout() -> None:
    for interval, timeout in ((0.0, 1.0), (2.0, 1.0), (1.0, 1.0)):
        with pytest.raises(ValueError):
            Liveness(EdgeMetrics(), interval, timeout)


async def test_a_viewer_the_edge_keeps_writing_to_is_not_pinged_away_until_writes_stop(
    tmp_path: Path,
) -> None:
    """A raw viewer that never answers a ping stays while counts are written to it (TCP
    acknowledges them: ``TCP_USER_TIMEOUT`` watches it), well past the liveness timeout;
    once the counts stop it is pinged and dropped as any silent socket."""
    options = {"liveness_interval": 0.5, "liveness_timeout": 2.0, "liveness_recheck": 30.0}
    async with edge_stack(tmp_path, **options) as stack:
        reader, writer = await raw_socket(stack)
        try:
            join = Join(id=1, token=stack.token(None, ROOM, viewer=True))
            writer.write(client_frame(OP_BINARY, encode(join)))
            seen = await reader.read(4096)
            while b"joined" not in seen:
                seen += await asyncio.wait_for(reader.read(4096), 10.0)
            loop = asyncio.get_running_loop()
            churn_until = loop.time() + 3 * 2.0  # three liveness timeouts of counts
            n = 0
            while loop.time() < churn_until:  # the room's count moves: counts go out
                churner = await stack.join(f"churn-{n}", viewer=True)
                await churner.close()
                n += 1
                with contextlib.suppress(TimeoutError):
                    seen += await asyncio.wait_for(reader.read(65536), 0.1)
            assert await _metric(stack, "stagecast_edge_liveness_drops_total") == 0
            assert b"counts" in seen
            with contextlib.suppress(ConnectionError):
                while chunk := await asyncio.wait_for(reader.read(65536), 30.0):
                    seen += chunk  # pinged, never answered
        finally:
            writer.close()
        assert b"\x89\x00" in seen  # it was pinged once the counts stopped
        assert await _metric(stack, "stagecast_edge_liveness_drops_total") >= 1


def test_the_recheck_is_never_shorter_than_the_interval() -> None:
    with pytest.raises(ValueError, match="recheck"):
        Liveness(EdgeMetrics(), 1.0, 2.0, recheck=0.5)
    assert Liveness(EdgeMetrics(), 1.0, 2.0).vouch == 0  # 0: writes do not vouch
    assert Liveness(EdgeMetrics(), 1.0, 2.0, recheck=5.0).vouch == 4.0
    with pytest.raises(ValueError, match="liveness_recheck"):
        EdgeConfig(nats_url="nats://x", api_key="k", api_secret="s", liveness_recheck=1.0)
