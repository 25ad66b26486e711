"""The edge's connection guards inside uvicorn and asyncio (STYLE rule 9: the one adapter).

uvicorn has no limit on connections per address, no deadline for a request's head, and
asyncio logs a traceback for every failed ``accept()`` at the descriptor limit. This module
is the only place that relies on their internals (uvicorn 0.54-0.55's `H11Protocol`,
asyncio's "socket.accept() out of system resource" report); tests/test_edge_limits.py
fails loudly when they move.

- `guarded_http`: the HTTP protocol class for `uvicorn.Config`. It counts every connection
  in a `ConnectionLedger` (from accept until the socket is gone, across the WebSocket
  upgrade), puts a refusal in the request scope's state under `REFUSAL_STATE` for the app
  to answer (`edge.app`), answers 503 and closes at once what the overflow lane cannot
  hold, and closes a connection whose request is not complete within the read timeout (408
  when part of a request arrived, silently when nothing did).
- Every request for ``/rtc`` is a signaling socket's upgrade, answered here and not by the
  app: the handshake is checked (`edge.handshake`; a bad one gets 400 and why), the 101
  goes out and the transport is handed to an `RtcSocket` (`edge.rtcsocket`) with the bytes
  that came after the request's head. A connection whose first bytes are a whole, plain
  ``GET /rtc`` head (`edge.handshake.plain_rtc_request`) skips h11 and the request scope;
  any other goes through h11 as every HTTP request does. While the edge is behind (its
  loop ran late lately, or too many sockets wait to join: `edge.admission.UpgradeGate`)
  the upgrade is answered ``503 SERVER_BUSY`` with ``Retry-After`` (whole seconds) and
  ``stagecast-retry-after-ms``, and closed: no 101, no socket, no session (a browser sees
  a failed upgrade and retries with its backoff). A socket refused over a cap is
  accepted only to be told so (an `error` frame ``TOO_MANY_CONNECTIONS``, close 4019: a
  browser cannot read the status of a refused upgrade); the others go to the `RtcEntry`
  (`edge.app`). No ASGI scope, no task and no queue per socket: uvicorn never sees these
  connections, so the edge closes them itself when it stops (`edge.main`).
- Per connection, the local and remote addresses are the ones asyncio read when it
  accepted it (uvicorn's `connection_made` asks the socket again: two system calls).
- `AcceptFailures`: a loop exception handler that turns the per-attempt accept reports into
  one line when accepting starts failing and one, with a count, when it works again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import h11
import uvicorn
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from edge.admission import ConnectionLedger, Refusal, UpgradeGate, UpgradeRefusal
from edge.closecodes import close_code
from edge.deadlines import Deadlines
from edge.handshake import (
    VERSION,
    BadUpgrade,
    accept_upgrade,
    plain_rtc_request,
    upgrade_token,
)
from edge.metrics import EdgeMetrics
from edge.rtcsocket import Liveness, RtcReceiver, RtcSocket
from edge.wsframe import binary_frame
from schemas.client import Error
from schemas.codec import encode
from schemas.errors import ErrorCode

log = logging.getLogger("stagecast.edge")

RTC_PATH = b"/rtc"
"""The signaling socket's path (docs/protocol.md)."""
REFUSAL_STATE = "stagecast.refusal"
"""The key of a connection's `Refusal` in its ASGI scope's ``state``."""

ACCEPT_FAILED = "socket.accept() out of system resource"
"""asyncio's message for an accept that failed with EMFILE, ENFILE, ENOBUFS or ENOMEM."""

RETRY_AFTER_MS_HEADER = "stagecast-retry-after-ms"
"""The refused upgrade's wait in milliseconds (``Retry-After`` has whole seconds only)."""

RtcEntry = Callable[[RtcSocket, "str | None"], "RtcReceiver | None"]
"""What serves an opened signaling socket, given the token sent with the upgrade (if any):
returns the socket's receiver (its session), or None after telling the socket to go."""


def raw_response(status: int, phrase: str, body: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for use before any request
    (`extra`: more header lines, each ending in CRLF)."""
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + data


def busy_response(refusal: UpgradeRefusal) -> bytes:
    """The 503 that refuses an upgrade while the edge is behind: `SERVER_BUSY`, the wait
    in ``Retry-After`` (whole seconds, rounded up) and in ms (`RETRY_AFTER_MS_HEADER`)."""
    ms = refusal.retry_after_ms
    extra = f"retry-after: {-(-ms // 1000)}\r\n{RETRY_AFTER_MS_HEADER}: {ms}\r\n"
    body = f"{ErrorCode.SERVER_BUSY.value}: {refusal.message}"
    return raw_response(503, "Service Unavailable", body, extra)


def guarded_http(
    ledger: ConnectionLedger,
    metrics: EdgeMetrics,
    read_timeout: float,
    liveness: Liveness,
    rtc: RtcEntry,
    max_message: int,
    upgrades: UpgradeGate,
    unjoined: Callable[[], int],
) -> type[asyncio.Protocol]:
    """The HTTP protocol class for `uvicorn.Config` (see the module docstring); signaling
    sockets are watched by `liveness` and read messages up to `max_message` bytes; an
    upgrade is refused while `upgrades` says the edge is behind (`unjoined`: its open
    sockets not yet joined)."""

    read_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
        weakref.WeakKeyDictionary()
    )
    """The request heads' deadlines, on one timer (`edge.deadlines`) per loop serving."""

    class GuardedHTTP(H11Protocol):
        """uvicorn's h11 protocol with the ledger and the request read deadline."""

        _read_deadline = 0
        """The request head's deadline's token in `read_deadlines` (0: none)."""
        _upgraded = False
        _dropped = False
        _fresh = True
        """Nothing was read yet: the first bytes may be a plain ``/rtc`` upgrade."""
        _h11_limit: int = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        _deadlines: Deadlines
        """This loop's entry of `read_deadlines` (looked up once per server, not per arm)."""
        _shared: ClassVar[dict[str, Any] | None] = None
        """What uvicorn's `__init__` derives from the server's configuration, made once."""

        def __init__(
            self,
            config: uvicorn.Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            # uvicorn's `__init__` (every attribute it sets, tests/test_edge_limits.py),
            # with what follows from the configuration made once per server instead of per
            # connection (two logger look-ups, a walk of the handlers, the loop look-up),
            # and the HTTP parser made only when a request needs it (`conn`): a plain
            # ``/rtc`` upgrade never does.
            shared = GuardedHTTP._shared
            if shared is None or shared["server_state"] is not server_state:
                if not config.loaded:
                    config.load()
                access_logger = logging.getLogger("uvicorn.access")
                limit = config.h11_max_incomplete_event_size
                loop = _loop or asyncio.get_event_loop()
                deadlines = read_deadlines.get(loop)
                if deadlines is None:
                    deadlines = read_deadlines[loop] = Deadlines(loop)
                shared = GuardedHTTP._shared = {
                    "config": config,
                    "app": config.loaded_app,
                    "loop": loop,
                    "_deadlines": deadlines,
                    "logger": logging.getLogger("uvicorn.error"),
                    "access_logger": access_logger,
                    "access_log": access_logger.hasHandlers(),
                    "_h11_limit": DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if limit is None else limit,
                    "ws_protocol_class": config.ws_protocol_class,
                    "root_path": config.root_path,
                    "asgi_version": config.asgi_version,
                    "limit_concurrency": config.limit_concurrency,
                    "timeout_keep_alive_task": None,
                    "timeout_keep_alive": config.timeout_keep_alive,
                    "server_state": server_state,
                    "connections": server_state.connections,
                    "tasks": server_state.tasks,
                    "transport": None,
                    "server": None,
                    "client": None,
                    "scheme": None,
                    "scope": None,
                    "headers": None,
                    "cycle": None,
                }
            self.__dict__.update(shared)
            self.app_state = app_state

        @property
        def conn(self) -> h11.Connection:
            """The request's HTTP parser (uvicorn's ``self.conn``), made on first use."""
            conn: h11.Connection | None = self.__dict__.get("_h11")
            if conn is None:
                conn = self.__dict__["_h11"] = h11.Connection(h11.SERVER, self._h11_limit)
            return conn

        @conn.setter
        def conn(self, conn: h11.Connection) -> None:
            self.__dict__["_h11"] = conn

        @property  # type: ignore[override]  # None before the connection, as uvicorn's
        def flow(self) -> FlowControl | None:
            """uvicorn's ``self.flow``, made on first use once connected: a plain ``/rtc``
            upgrade hands the transport to its `RtcSocket` without one (no `asyncio.Event`
            per connection)."""
            flow: FlowControl | None = self.__dict__.get("_flow")
            if flow is None and self.transport is not None:
                flow = self.__dict__["_flow"] = FlowControl(self.transport)
            return flow

        @flow.setter
        def flow(self, flow: FlowControl | None) -> None:
            self.__dict__["_flow"] = flow

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # uvicorn's `connection_made`, with the addresses asyncio already holds: its
            # own asks the socket again (a getsockname and a getpeername per connection).
            self.connections.add(self)
            self.transport = transport
            self.server = _local_address(transport.get_extra_info("sockname"))
            self.client = _address(transport.get_extra_info("peername"))
            self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
            if self.logger.level <= TRACE_LOG_LEVEL:
                prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
                self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
            metrics.connections_accepted += 1
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
            if self._fresh:
                self._fresh = False
                plain = plain_rtc_request(data) if data.startswith(b"GET /rtc") else None
                if plain is not None:
                    self.headers = plain.headers
                    self._upgrade(b"GET", plain.query, plain.trailing)
                    return
            super().data_received(data)
            if self._upgraded or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._disarm()  # upgraded, or the whole request is in
            else:
                self._arm()  # keeps the first byte's deadline once armed

        def _should_upgrade(self) -> bool:
            """Every request for ``/rtc`` is an upgrade (or a 400); no other is."""
            return bool(self.scope["raw_path"] == RTC_PATH)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            trailing, _ = self.conn.trailing_data
            self._upgrade(event.method, self.scope["query_string"], bytes(trailing))

        def _upgrade(self, method: bytes, query: bytes, trailing: bytes) -> None:
            """Answer the ``/rtc`` request whose headers are in `self.headers`: 400, or
            101 and the transport to an `RtcSocket` (fed `trailing`, the bytes after the
            request's head)."""
            self._disarm()
            self.connections.discard(self)  # uvicorn does not wait for it when it stops
            busy = upgrades.check(liveness.behind(self.loop.time()), unjoined())
            if busy is not None:
                self._dropped = True
                self.transport.write(busy_response(busy))
                self.transport.close()
                return
            try:
                response = accept_upgrade(method, self.headers)
            except BadUpgrade as exc:
                self._dropped = True
                extra = f"sec-websocket-version: {VERSION.decode()}\r\n"
                if not exc.version_header:
                    extra = ""
                self.transport.write(raw_response(400, "Bad Request", f"{exc}\n", extra))
                self.transport.close()
                return
            self._upgraded = True  # the socket owns the ledger entry from here
            transport, client = self.transport, self.client
            socket = RtcSocket(
                transport,
                self.loop,
                liveness,
                max_message,
                (lambda: ledger.close(client)) if client is not None else (lambda: None),
            )
            transport.write(response)
            transport.set_protocol(socket)
            refusal = self.app_state.get(REFUSAL_STATE)
            if isinstance(refusal, Refusal):
                code = ErrorCode.TOO_MANY_CONNECTIONS.value
                metrics.error(code)
                error = Error(id=None, code=code, message=refusal.message)
                socket.write(binary_frame(encode(error)))
                socket.close(close_code(code), code)
            else:
                token = upgrade_token(self.headers, query)
                socket.receiver = rtc(socket, token)
            if trailing:
                socket.data_received(trailing)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            try:
                super().connection_lost(exc)
            finally:
                if not self._upgraded and self.client is not None:
                    ledger.close(self.client)

        def _arm(self) -> None:
            if not self._read_deadline:
                self._read_deadline = self._deadlines.add(read_timeout, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_deadline:
                self._deadlines.cancel(self._read_deadline)
                self._read_deadline = 0

        def _read_timed_out(self) -> None:
            self._read_deadline = 0
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

    return GuardedHTTP


def _address(info: Any) -> tuple[str, int] | None:
    """(host, port) of an address asyncio took from the socket at accept, as uvicorn's own
    look-up makes it (None for one that is not an IP address)."""
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


def _local_address(info: Any) -> tuple[str, int | None] | None:
    """The listening side's address, as uvicorn's own look-up makes it (a Unix socket's
    path with no port)."""
    return (info, None) if isinstance(info, str) else _address(info)


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
    "REFUSAL_STATE",
    "RETRY_AFTER_MS_HEADER",
    "RTC_PATH",
    "AcceptFailures",
    "RtcEntry",
    "busy_response",
    "guarded_http",
    "raw_response",
    "refusal_of",
]
