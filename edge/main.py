"""Running an edge: in-process for tests and `stagecast up`, or as its own process.

Order matters on the way out. uvicorn does not know the signaling sockets (the edge serves
them itself, `edge.serving`), so the edge drains first: every socket gets `disconnect
SERVER_SHUTDOWN` and close 4017 (resume on another edge), `EdgeGone` goes out, then uvicorn
is told to exit and whatever signaling socket is still open (one that never answered its
close, one opened meanwhile and told to go) is aborted, so nothing waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn

from edge.admission import ConnectionLedger, UpgradeGate
from edge.app import create_app, rtc_entry
from edge.bus import BusUnavailable
from edge.config import EdgeConfig, accept_backlog
from edge.node import EdgeNode
from edge.rtcsocket import Liveness
from edge.serving import AcceptFailures, guarded_http
from processes.runtime import tune_gc

log = logging.getLogger("stagecast.edge")


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner (see `serve`).

    `capture_signals` is uvicorn's hook around `serve`; overriding it is the one place the
    edge touches uvicorn beyond its public `Config`/`Server` API.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(config: EdgeConfig) -> tuple[uvicorn.Config, Liveness]:
    app = create_app(config)
    ledger: ConnectionLedger = app.state.connections
    node: EdgeNode = app.state.edge
    liveness = Liveness(
        node.metrics, config.liveness_interval, config.liveness_timeout, config.liveness_recheck
    )
    upgrades = UpgradeGate(
        config.max_upgrade_lag, config.max_unjoined_sockets, config.upgrade_retry_after
    )
    node.metrics.upgrades_refused = lambda: upgrades.refused
    http = guarded_http(
        ledger,
        node.metrics,
        config.http_read_timeout,
        liveness,
        rtc_entry(node),
        config.ws_max_size,
        upgrades,
        lambda: len(node.unjoined),
    )
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=http,
        ws="none",  # the one WebSocket, /rtc, is served by `edge.serving` itself
        backlog=accept_backlog(config.max_connections),
        lifespan="on",
        log_level="warning",
    ), liveness


def _bound_port(server: uvicorn.Server, fallback: int) -> int:
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return fallback


@contextlib.asynccontextmanager
async def running_edge(config: EdgeConfig, *, start_timeout: float = 30.0) -> AsyncIterator[str]:
    """Run an edge in this event loop for the duration of the context.

    Yields its base URL, ``http://<host>:<port>`` (the real port when `config.port` is 0).
    Raises `NatsAuthRefused` when NATS refuses the credentials, `RuntimeError` if it does
    not start otherwise (NATS unreachable, port taken). On exit the
    sockets are drained (close 4017) and the server stops. Meanwhile failed accepts (the
    descriptor limit) are reported once per episode, not once per attempt (`AcceptFailures`).
    """
    uvicorn_config, liveness = _uvicorn_config(config)
    server = _EmbeddedServer(uvicorn_config)
    node = _node_of(server)
    if node is not None:
        try:  # a refused connection raises here, as itself (NatsAuthRefused)
            await node.connect()
        except BusUnavailable as exc:
            raise RuntimeError(f"the edge did not start: {exc}") from None
    try:
        listener = _listener(uvicorn_config, liveness)
    except BaseException:
        if node is not None:
            await node.stop()
        raise
    loop = asyncio.get_running_loop()
    accept_failures = AcceptFailures(loop, node.metrics) if node else None
    if accept_failures is not None:
        accept_failures.install()
    liveness.start(loop)
    task = asyncio.create_task(_serve(server, listener))
    try:
        await _wait_started(server, task, start_timeout)
        port = _bound_port(server, config.port)
        host = f"[{config.host}]" if ":" in config.host else config.host
        yield f"http://{host}:{port}"
    finally:
        try:
            await _stop(server, task, liveness)
        finally:
            liveness.stop()
            if accept_failures is not None:
                accept_failures.uninstall()
            if node is not None:  # the lifespan stopped it, unless it never ran
                await node.stop()
            if listener is not None:
                listener.close()  # uvicorn closed it, unless it never started (idempotent)


def _listener(config: uvicorn.Config, liveness: Liveness) -> socket.socket | None:
    """The edge's listening socket, bound here (uvicorn's own binding, `Config.bind_socket`)
    so that liveness's ``TCP_USER_TIMEOUT`` is on it before it listens: every accepted
    socket has it then, with no system call per socket (`Liveness.watch_listener`).

    Only for a literal IPv4 address: a host name, or an empty host, can stand for several
    addresses, which uvicorn binds one socket each (asyncio's `create_server`); those (and
    an address it cannot bind, which uvicorn reports the usual way) are left to uvicorn, and
    each accepted socket gets the option as before. Raises `RuntimeError` when the address
    cannot be bound (uvicorn's `bind_socket` exits the process).
    """
    try:
        if ipaddress.ip_address(config.host).version != 4:
            return None  # asyncio binds IPv6 only (before the bind); uvicorn's does not
    except ValueError:
        return None
    try:
        sock = config.bind_socket()
    except SystemExit:
        raise RuntimeError(
            f"the edge did not start: cannot listen on {config.host} port {config.port}"
        ) from None
    liveness.watch_listener(sock)
    return sock


async def _serve(server: uvicorn.Server, listener: socket.socket | None) -> None:
    try:
        await server.serve(sockets=None if listener is None else [listener])
    except SystemExit as exc:  # uvicorn exits the process when the lifespan fails to start
        raise RuntimeError(f"uvicorn stopped with exit code {exc.code}") from None


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not server.started:
        if task.done():
            exc = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"the edge did not start: {exc!r}") from exc
        if loop.time() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the edge did not start within {timeout} s")
        await asyncio.sleep(0.01)


async def _stop(server: uvicorn.Server, task: asyncio.Task[None], liveness: Liveness) -> None:
    node = _node_of(server)
    if node is not None and server.started:
        try:
            await node.drain()
        except Exception:
            log.exception("draining the edge failed")
    server.should_exit = True
    # uvicorn does not count the signaling sockets, so it would not wait for them; abort
    # those the drain left open (a client that never answered its close) ...
    liveness.close_all()
    await asyncio.wait({task}, timeout=15.0)
    liveness.close_all()  # ... and those opened (and told to go) until uvicorn stopped
    if not task.done():
        server.force_exit = True
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _node_of(server: uvicorn.Server) -> EdgeNode | None:
    app = server.config.app
    state = getattr(app, "state", None)
    node = getattr(state, "edge", None)
    return node if isinstance(node, EdgeNode) else None


async def serve(config: EdgeConfig) -> None:
    """Run an edge until SIGINT or SIGTERM, then drain and stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running_edge(config) as url:
            log.info("edge %s listening on %s", config.edge_id, url)
            print(f"edge {config.edge_id} ready at {url}", flush=True)
            tune_gc()
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = ["running_edge", "serve"]
