"""The edge's connection limits against real sockets: the join deadline, the per-edge and
per-address caps, the HTTP read timeout, and a quiet log at the descriptor limit.

The descriptor-limit tests run an edge as its own process (``stagecast edge``) with a low
RLIMIT_NOFILE and flood it with raw TCP connections from this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from edge.admission import ConnectionLedger, UpgradeGate
from edge.metrics import EdgeMetrics, sample_value
from edge.rtcsocket import Liveness
from edge.serving import ACCEPT_FAILED, guarded_http
from processes.natsserver import NatsServer
from schemas.client import Join, JoinAccepted
from tests.edge_fixtures import Client, Stack, edge_stack
from tests.polling import eventually

OTHER_ADDRESS = "127.0.0.2"
"""A second loopback source address: the edge sees it as another client."""


def address(stack: Stack) -> tuple[str, int]:
    parts = urlsplit(stack.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def join_from(stack: Stack, source: str, participant_id: str) -> Client:
    client = await stack.connect(local_addr=(source, 0))
    reply = await client.request(Join(id=client.next_id(), token=stack.token(participant_id)))
    assert isinstance(reply, JoinAccepted), reply
    return client


async def metrics_from(stack: Stack, source: str) -> str:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=stack.url, transport=transport, timeout=10) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


async def assert_refused(client: Client, limit_text: str) -> None:
    error = await client.error()
    assert (error.id, error.code) == (None, "TOO_MANY_CONNECTIONS")
    assert limit_text in error.message
    closed = await client.closed()
    assert (closed.code, closed.reason) == (4019, "TOO_MANY_CONNECTIONS")


# --------------------------------------------------------------------------- join deadline


async def test_socket_that_never_joins_gets_join_timeout_and_close_4018(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, join_deadline=0.5) as stack:
        joined = await stack.join("on-time")
        idle = await stack.connect()
        await idle.sync()  # pings are answered meanwhile, but do not count as a join
        error = await idle.error()
        assert (error.id, error.code) == (None, "JOIN_TIMEOUT")
        closed = await idle.closed()
        assert (closed.code, closed.reason) == (4018, "JOIN_TIMEOUT")
        await joined.sync()  # joined before its deadline: still served after it
        metrics = await metrics_from(stack, "127.0.0.1")
        assert sample_value(metrics, "stagecast_edge_join_timeouts_total") == 1, metrics


# --------------------------------------------------------------------------- caps


async def test_socket_over_the_per_address_cap_is_refused_4019_and_others_are_unaffected(
    tmp_path: Path,
) -> None:
    async with edge_stack(tmp_path, max_connections_per_address=3) as stack:
        first = [await join_from(stack, "127.0.0.1", f"first-{i}") for i in range(3)]
        await assert_refused(await stack.connect(), "at most 3 connections from one address")
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            response = await http.get("/healthz")  # plain HTTP from the full address: 503
        assert response.status_code == 503
        assert response.text.startswith("TOO_MANY_CONNECTIONS")

        other = await join_from(stack, OTHER_ADDRESS, "other-address")
        for client in (*first, other):
            await client.sync()
        metrics = await metrics_from(stack, OTHER_ADDRESS)
        refused = sample_value(metrics, "stagecast_edge_connections_refused_total", scope="address")
        assert refused == 2, metrics
        too_many = sample_value(metrics, "stagecast_edge_errors_total", code="TOO_MANY_CONNECTIONS")
        assert too_many == 2, metrics

        await first[0].close()  # its slot is freed once the edge sees it gone
        again = await eventually(
            lambda: join_from(stack, "127.0.0.1", "again"), what="a slot freed after a close"
        )
        await again.sync()


async def test_socket_over_the_edge_cap_is_refused_4019_from_any_address(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, max_connections=2) as stack:
        first = [await join_from(stack, "127.0.0.1", f"first-{i}") for i in range(2)]
        over = await stack.connect(local_addr=(OTHER_ADDRESS, 0))
        await assert_refused(over, "this edge serves at most 2 connections")
        for client in first:
            await client.sync()


# --------------------------------------------------------------------------- HTTP read timeout


async def read_to_eof(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything until the edge closes the connection (fails if it stays open `within` s)."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except TimeoutError:
        raise AssertionError(f"the edge kept the connection open for {within} s") from None


async def test_partial_http_request_is_closed_after_the_read_timeout(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, http_read_timeout=0.5) as stack:
        joined = await stack.join("joined")
        host, port = address(stack)

        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HT")  # half a request line, then nothing
        assert (await read_to_eof(reader, 5.0)).startswith(b"HTTP/1.1 408 ")
        writer.close()

        reader, writer = await asyncio.open_connection(host, port)  # sends nothing at all
        assert await read_to_eof(reader, 5.0) == b""
        writer.close()

        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n")

        async def trickle() -> None:  # one header byte every 50 ms: the deadline still holds
            with contextlib.suppress(OSError):
                for _ in range(100):
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        dripping = asyncio.create_task(trickle())
        try:
            assert (await read_to_eof(reader, 4.0)).startswith(b"HTTP/1.1 408 ")
        finally:
            dripping.cancel()
            writer.close()

        reader, writer = await asyncio.open_connection(host, port)  # a body that stalls
        writer.write(b"POST /api/list_rooms HTTP/1.1\r\nHost: edge\r\nContent-Length: 100\r\n\r\n{")
        await read_to_eof(reader, 5.0)
        writer.close()

        await joined.sync()  # the upgraded socket is not subject to the read timeout
        metrics = await metrics_from(stack, "127.0.0.1")
        assert sample_value(metrics, "stagecast_edge_http_read_timeouts_total") == 4, metrics


# --------------------------------------------------------------------------- descriptor limit

_NOFILE = 128
_REPO = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def edge_process(tmp_path: Path, *options: str) -> AsyncIterator[tuple[int, Path]]:
    """``stagecast edge`` with RLIMIT_NOFILE at `_NOFILE`: (its port, its log file)."""
    async with NatsServer(tmp_path / "nats") as nats:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log_path = tmp_path / "edge.log"
        boot = (
            "import resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({_NOFILE}, {_NOFILE})); "
            "from stagecast.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        args = ["edge", "--nats-url", nats.url, "--port", str(port), *options]
        env = {**os.environ, "PYTHONPATH": str(_REPO)}
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", boot, *args, stdout=log_file, stderr=log_file, env=env
            )
        try:
            await eventually(lambda: b"ready at" in log_path.read_bytes(), what="edge ready")
            yield port, log_path
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def flood(port: int, count: int) -> list[asyncio.StreamWriter]:
    """Up to `count` raw TCP connections that send nothing, one after the other (paced, so
    the edge's small backlog keeps up); stops at the first the edge's backlog has no room
    for within a second (the edge is not accepting any more)."""
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        except (OSError, TimeoutError):
            break
        writers.append(writer)
        await asyncio.sleep(0.005)
    return writers


async def http_get(port: int, path: str, within: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode())
        return await read_to_eof(reader, within)
    finally:
        writer.close()


async def test_accept_failures_at_the_descriptor_limit_log_one_line_not_a_storm(
    tmp_path: Path,
) -> None:
    # Caps far above the descriptor limit: the process really runs out of descriptors.
    options = ("--max-connections", "100000", "--http-read-timeout", "60")
    async with edge_process(tmp_path, *options) as (port, log_path):
        sockets = await flood(port, 2 * _NOFILE)
        try:
            await eventually(
                lambda: any(
                    line in log_path.read_text()
                    for line in ("accepting connections fails", ACCEPT_FAILED)
                ),
                what="the edge to run out of descriptors",
            )
            await asyncio.sleep(3.0)  # let a storm, if there is one, pile up
            text = log_path.read_text()
            assert len(text) < 20_000, f"{len(text)} bytes of log; it starts: {text[:2000]}"
            assert text.count("accepting connections fails") == 1
            assert ACCEPT_FAILED not in text  # asyncio's per-attempt report never printed
        finally:
            for sock in sockets:
                sock.close()
        # Below the limit again: a new connection is served, and the episode is summed up.
        reply = await http_get(port, "/metrics")
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        body = reply.partition(b"\r\n\r\n")[2].decode()
        assert (sample_value(body, "stagecast_edge_accept_failures_total") or 0) > 0, body
        await eventually(
            lambda: "accepting connections again:" in log_path.read_text(),
            what="the recovery line",
        )


async def test_default_caps_keep_the_edge_below_its_descriptor_limit(tmp_path: Path) -> None:
    async with edge_process(tmp_path) as (port, log_path):
        sockets = await flood(port, 2 * _NOFILE)
        try:
            # Beyond the cap and its overflow lane a connection is told 503 at once ...
            assert len(sockets) == 2 * _NOFILE, "the edge stopped accepting"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                reply = await read_to_eof(reader, 5.0)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the edge's log: {log_path.read_text()}") from None
            writer.close()
            assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
            assert b"TOO_MANY_CONNECTIONS" in reply
            # ... and the process never runs out of descriptors.
            assert "accepting connections fails" not in log_path.read_text()
        finally:
            for sock in sockets:
                sock.close()
        reply = await eventually(
            lambda: http_get(port, "/metrics"), what="the edge to serve again after the flood"
        )
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        assert b'stagecast_edge_connections_refused_total{scope="edge"}' in reply


# --------------------------------------------------------------------------- the adapter


def test_the_uvicorn_and_asyncio_internals_the_guards_rely_on_are_there() -> None:
    """`edge.serving` subclasses uvicorn's h11 protocol (and takes the ``/rtc`` upgrade
    from it) and matches asyncio's accept report."""
    for name in (
        "connection_made",
        "data_received",
        "connection_lost",
        "handle_websocket_upgrade",
        "_should_upgrade",
    ):
        assert callable(getattr(H11Protocol, name)), name
    source = inspect.getsource(H11Protocol)
    for needle in (
        "self.app_state",
        "app_state=self.app_state",
        "self.client",
        "self.conn",
        "self.connections",
        "self.flow = FlowControl(transport)",
        "self.server = get_local_addr(transport)",
        "self.client = get_remote_addr(transport)",
        'self.scheme = "https" if is_ssl(transport) else "http"',
        "self.headers = [(key.lower(), value)",
        '"raw_path": full_raw_path',
        '"query_string": query_string',
        "if self._should_upgrade():\n                    self.handle_websocket_upgrade(event)",
    ):
        assert needle in source, needle
    assert "trailing_data" in dir(h11.Connection)
    assert ACCEPT_FAILED in inspect.getsource(asyncio.selector_events)


def test_the_guarded_protocol_sets_every_attribute_uvicorns_init_sets() -> None:
    """`GuardedHTTP.__init__` stands in for uvicorn's (made once per server, the parser on
    first use): an attribute uvicorn adds must be added there too."""
    source = inspect.getsource(H11Protocol.__init__)
    theirs = set(re.findall(r"^\s+self\.(\w+)(?:: [^=]+)? = ", source, re.MULTILINE))
    assert {"conn", "loop", "flow", "cycle"} <= theirs, theirs  # the pattern still reads it
    config = uvicorn.Config(lambda scope, receive, send: None, lifespan="off", ws="none")
    state = ServerState()
    metrics = EdgeMetrics()
    liveness = Liveness(metrics, 1.0, 2.0)
    protocol_class: Any = guarded_http(  # uvicorn calls it with these keywords
        ConnectionLedger(1, 1, 1),
        metrics,
        1.0,
        liveness,
        lambda socket, token: None,
        1024,
        UpgradeGate(1.0, 1, 1.0),
        lambda: 0,
    )
    loop = asyncio.new_event_loop()
    try:
        protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
        for name in sorted(theirs):
            assert hasattr(protocol, name), name
        plain = H11Protocol(config=config, server_state=state, app_state={}, _loop=loop)
        assert protocol.conn.our_role is plain.conn.our_role
        assert protocol.conn.their_state is plain.conn.their_state
        assert protocol.loop is loop and protocol.connections is state.connections
    finally:
        loop.close()
