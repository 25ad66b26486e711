"""The edge's connection guards inside uvicorn and asyncio (STYLE rule 9: the one adapter).

uvicorn has no limit on connections per address, no deadline for a request's head, and
asyncio logs a traceback for every failed ``accept()`` at the descriptor limit. This module
is the only place that relies on their internals (uvicorn 0.54-0.55's `H11Protocol` and
`WebSocketsSansIOProtocol`, asyncio's "socket.accept() out of system resource" report);
tests/test_edge_limits.py fails loudly when they move.

- `guarded_protocols`: HTTP and WebSocket protocol classes for `uvicorn.Config` that count
  every connection in a `ConnectionLedger` (from accept until the socket is gone, across the
  WebSocket upgrade), put a refusal in the request scope's state under `REFUSAL_STATE` for
  the app to answer (`edge.app`), answer 503 and close at once what the overflow lane
  cannot hold, and close a connection whose request is not complete within the read timeout (408
  when part of a request arrived, silently when nothing did).
- The WebSocket protocol is also each socket's `FrameSink` (`edge.sendqueue`): complete
  frames built once (`edge.wsframe`) are written straight to the transport while it is
  not paused, and the queue is drained when it resumes; `line_of` finds it in the scope.
- `Liveness`: one edge-wide sweep instead of a ping timer per socket: a socket silent for
  `interval` seconds gets a ping, one silent for `timeout` seconds is dropped.
- `AcceptFailures`: a loop exception handler that turns the per-attempt accept reports into
  one line when accepting starts failing and one, with a count, when it works again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from edge.admission import ConnectionLedger, Refusal
from edge.metrics import EdgeMetrics
from edge.sendqueue import FrameSink
from edge.wsframe import PING
from schemas.errors import ErrorCode

log = logging.getLogger("stagecast.edge")

REFUSAL_STATE = "stagecast.refusal"
"""The key of a connection's `Refusal` in its ASGI scope's ``state``."""
LINE_STATE = "stagecast.line"
"""The key of a WebSocket's `FrameSink` (its protocol) in its ASGI scope's ``state``."""

ACCEPT_FAILED = "socket.accept() out of system resource"
"""asyncio's message for an accept that failed with EMFILE, ENFILE, ENOBUFS or ENOMEM."""


def raw_response(status: int, phrase: str, body: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for use before any request."""
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + data


class Liveness:
    """The edge-wide liveness sweep over its WebSockets (see the module docstring).

    Every `tick` seconds each socket is looked at once: any bytes from the peer (a pong,
    a frame) count as life; a socket silent for `interval` seconds gets an empty ping
    (every client answers it: RFC 6455 requires a pong), one silent for `timeout` seconds
    is taken for dead and aborted (its session sees the socket drop).
    """

    def __init__(self, metrics: EdgeMetrics, interval: float, timeout: float) -> None:
        if not 0 < interval < timeout:
            raise ValueError("need 0 < interval < timeout")
        self.metrics = metrics
        self.interval = interval
        self.timeout = timeout
        self.tick = min(interval, timeout - interval) / 2
        self.sockets: set[_Watched] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = loop.call_later(self.tick, self.sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def sweep(self) -> None:
        """Ping the quiet sockets, drop the silent ones, and schedule the next sweep."""
        loop = self._loop
        if loop is None:
            return
        # The next sweep first: a socket that fails to drop must not end the sweeps.
        self._timer = loop.call_later(self.tick, self.sweep)
        now = loop.time()
        quiet, dead = now - self.interval, now - self.timeout
        for socket in list(self.sockets):
            heard = socket.last_heard
            if heard > quiet:
                continue
            if heard <= dead:
                self.metrics.liveness_drops += 1
                self.sockets.discard(socket)
                socket.drop()
            elif not socket.pinged:
                socket.ping()


class _Watched(FrameSink, Protocol):
    last_heard: float
    pinged: bool

    def ping(self) -> None: ...


def guarded_protocols(
    ledger: ConnectionLedger, metrics: EdgeMetrics, read_timeout: float, liveness: Liveness
) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """(http, ws) protocol classes for `uvicorn.Config` (see the module docstring). Run
    uvicorn with ``ws_ping_interval=None``: `liveness` pings instead."""

    class GuardedWebSocket(WebSocketsSansIOProtocol):
        """uvicorn's WebSocket protocol as a `FrameSink`, watched by `liveness`; the ledger
        forgets the connection when it is lost."""

        on_writable: Callable[[], None] | None = None
        ready = False
        """`FrameSink.ready`, kept up to date (read once per frame sent, so not computed)."""
        last_heard = 0.0
        pinged = False
        _paused = False

        def _refresh(self) -> None:
            self.ready = self.handshake_complete and not (self._paused or self.gone)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.last_heard = self.loop.time()
            liveness.sockets.add(self)

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:
                scope["state"][LINE_STATE] = self

        async def send(self, message: Any) -> None:
            try:
                await super().send(message)
            finally:
                self._refresh()  # the accept opens the line; a close ends it

        def shutdown(self) -> None:
            self.ready = False  # uvicorn closes the socket (1012)
            super().shutdown()

        def data_received(self, data: bytes) -> None:
            self.last_heard = self.loop.time()
            self.pinged = False
            super().data_received(data)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._paused = True
            self.ready = False

        def resume_writing(self) -> None:
            super().resume_writing()
            self._paused = False
            self._refresh()
            if self.on_writable is not None:
                self.on_writable()

        def connection_lost(self, exc: Exception | None) -> None:
            liveness.sockets.discard(self)
            self.ready = False
            try:
                super().connection_lost(exc)
            finally:
                if self.client is not None:
                    ledger.close(self.client)
                on_writable, self.on_writable = self.on_writable, None
                if on_writable is not None:
                    on_writable()  # the queue learns that the socket is gone

        # FrameSink, and what the liveness sweep needs

        @property
        def gone(self) -> bool:
            return self.close_sent or self.disconnected or self.transport.is_closing()

        def write(self, frame: bytes) -> None:
            self.transport.write(frame)

        def close(self, code: int, reason: str) -> None:
            """uvicorn's ``websocket.close`` without the ASGI round trip."""
            if self.gone or not self.handshake_complete:
                return
            self.ready = False
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

        def ping(self) -> None:
            self.pinged = True
            if self.handshake_complete and not self.gone:
                self.transport.write(PING)

        def drop(self) -> None:
            self.ready = False
            self.transport.abort()

    class GuardedHTTP(H11Protocol):
        """uvicorn's h11 protocol with the ledger and the request read deadline."""

        _read_timer: asyncio.TimerHandle | None = None
        _upgraded = False
        _dropped = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            refusal = ledger.open(self.client) if self.client is not None else None
            if refusal is not None:
                metrics.connections_refused[refusal.scope] += 1
                if not refusal.held:
                    self._drop(refusal)
                    return
                self.app_state = {**self.app_state, REFUSAL_STATE: refusal}
            self._arm()

        def _drop(self, refusal: Refusal) -> None:
            """No room even to hold it: 503 and close at once (a client that already sent
            its request may see a reset instead; one that reads first sees the 503)."""
            self._dropped = True
            body = f"{ErrorCode.TOO_MANY_CONNECTIONS.value}: {refusal.message}"
            self.transport.write(raw_response(503, "Service Unavailable", body))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._dropped:
                return
            super().data_received(data)
            if self._upgraded or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._disarm()  # upgraded, or the whole request is in
            else:
                self._arm()  # keeps the first byte's deadline once armed

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._upgraded = True  # the WebSocket protocol owns the ledger entry from here
            self._disarm()
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            try:
                super().connection_lost(exc)
            finally:
                if not self._upgraded and self.client is not None:
                    ledger.close(self.client)

        def _arm(self) -> None:
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(read_timeout, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self._upgraded or self._dropped or self.transport.is_closing():
                return
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                return
            metrics.http_read_timeouts += 1
            partial, _ = self.conn.trailing_data
            if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE and partial:
                body = f"no whole request within {read_timeout:g} s"
                self.transport.write(raw_response(408, "Request Timeout", body))
            self.transport.close()

    return GuardedHTTP, GuardedWebSocket


def line_of(scope: Any) -> FrameSink | None:
    """The `FrameSink` of a WebSocket served by `guarded_protocols`' protocol, if any."""
    state = scope.get("state") if isinstance(scope, dict) else None
    line = state.get(LINE_STATE) if isinstance(state, dict) else None
    return line if line is not None and hasattr(line, "write") else None


def refusal_of(scope: Any) -> Refusal | None:
    """The `Refusal` `guarded_protocols` put in an ASGI scope, if any."""
    state = scope.get("state") if isinstance(scope, dict) else None
    refusal = state.get(REFUSAL_STATE) if isinstance(state, dict) else None
    return refusal if isinstance(refusal, Refusal) else None


class AcceptFailures:
    """A loop exception handler that aggregates asyncio's failed-accept reports.

    At the descriptor limit asyncio reports each failed ``accept()`` (thousands a second
    under load). This handler counts them in `metrics.accept_failures`, logs one error when
    they start and one warning, with the count, once none came for `quiet_s`; every other
    report goes to the handler that was there before (or the loop's default).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, metrics: EdgeMetrics, quiet_s: float = 2.0
    ) -> None:
        self.loop = loop
        self.metrics = metrics
        self.quiet_s = quiet_s
        self.previous = loop.get_exception_handler()
        self.failing = 0
        self._since = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def uninstall(self) -> None:
        """Put the previous handler back (and report a failure episode still open)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._report_recovery()
        if self.loop.get_exception_handler() is self:  # else a later handler is on top
            self.loop.set_exception_handler(self.previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.metrics.accept_failures += 1
        self._last = time.monotonic()
        if not self.failing:
            self._since = self._last
            log.error(
                "accepting connections fails (%s): the process is out of descriptors or "
                "memory; new connections wait in the backlog. Reported again when it recovers.",
                context.get("exception"),
            )
            self._timer = loop.call_later(self.quiet_s, self._check_quiet)
        self.failing += 1

    def _check_quiet(self) -> None:
        self._timer = None
        left = self._last + self.quiet_s - time.monotonic()
        if left > 0:
            self._timer = self.loop.call_later(left, self._check_quiet)
            return
        self._report_recovery()

    def _report_recovery(self) -> None:
        if self.failing:
            log.warning(
                "accepting connections again: %d accept attempts failed over %.1f s",
                self.failing,
                self._last - self._since,
            )
            self.failing = 0


__all__ = [
    "ACCEPT_FAILED",
    "LINE_STATE",
    "REFUSAL_STATE",
    "AcceptFailures",
    "Liveness",
    "guarded_protocols",
    "line_of",
    "raw_response",
    "refusal_of",
]
