"""The edge's Starlette app (the server API, health, metrics, a page) and its signaling entry.

Routes: ``POST /api/<name>`` (`edge.api`),
``GET /healthz`` (200 ``ok`` when NATS is connected and the statekeeper answers healthy
within a second, else 503 and the reason), ``GET /metrics`` (Prometheus text), ``GET /``
(the demo page), ``POST /whip`` and ``DELETE /whip/<session>`` (WHIP ingest,
`edge.whip`), ``GET /static/<file>`` (the browser SDK and the page's files) and, in dev
mode only, ``POST /dev/token`` and ``POST /dev/promote`` (`edge.page`). The lifespan starts
and stops the `EdgeNode` (the one NATS connection); the node is on ``app.state.edge``, the
`ConnectionLedger` its protocols count connections in on ``app.state.connections``.

An HTTP request on a connection refused over a cap (`edge.serving` marks it) is answered
here: 503 with ``TOO_MANY_CONNECTIONS``. Signaling sockets (``/rtc``, docs/protocol.md)
never reach the app: `edge.serving` answers their upgrade and hands each open socket to
`rtc_entry`, which starts its `EdgeSession` (or, on a draining edge, tells it to resume
elsewhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.admission import ConnectionLedger, Refusal
from edge.api import handle_api
from edge.closecodes import close_code
from edge.config import EdgeConfig, overflow_lane
from edge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge.metrics import EdgeMetrics
from edge.node import EdgeNode
from edge.page import routes as page_routes
from edge.replays import SeenTokens
from edge.requests import handle_frame
from edge.rtcsocket import RtcSocket
from edge.serving import RtcEntry, refusal_of
from edge.session import EdgeSession
from edge.whip import routes as whip_routes
from edge.wsframe import binary_frame
from schemas.client import Disconnect
from schemas.codec import encode
from schemas.errors import ErrorCode

PROMETHEUS_TEXT = METRICS_CONTENT_TYPE


class RefuseOverCapacity:
    """ASGI middleware: answer the connections refused over a cap (the module docstring)."""

    def __init__(self, app: ASGIApp, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = refusal_of(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        self.metrics.error(ErrorCode.TOO_MANY_CONNECTIONS.value)
        response = _too_many(refusal)
        await response(scope, receive, send)


def _too_many(refusal: Refusal) -> Response:
    body = f"{ErrorCode.TOO_MANY_CONNECTIONS.value}: {refusal.message}"
    return PlainTextResponse(body, status_code=503, headers={"connection": "close"})


def rtc_entry(node: EdgeNode) -> RtcEntry:
    """What `edge.serving` hands each open signaling socket to: a new `EdgeSession` serving
    its frames with `handle_frame`, or, while the edge drains, a `disconnect`
    ``SERVER_SHUTDOWN`` and its close code (the client resumes on another edge)."""

    def enter(socket: RtcSocket, token: str | None) -> EdgeSession | None:
        if node.draining:
            code = ErrorCode.SERVER_SHUTDOWN.value
            socket.write(binary_frame(encode(Disconnect(reason=code, can_reconnect=True))))
            socket.close(close_code(code), code)
            return None
        session = EdgeSession(node, socket, token, handle_frame, socket.loop)
        session.open()
        return session

    return enter


def create_app(config: EdgeConfig) -> Starlette:
    """The edge's ASGI app, served by `edge.main.running_edge` (with `rtc_entry` for its
    signaling sockets)."""
    node = EdgeNode(config)
    seen_admin_tokens = SeenTokens()
    connections = ConnectionLedger(
        config.max_connections,
        config.max_connections_per_address,
        overflow_lane(config.max_connections),
    )
    node.metrics.connections = lambda: connections.admitted

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    async def healthz(request: Request) -> Response:
        healthy, reason = await node.health()
        return PlainTextResponse(reason, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(node.metrics.render(), media_type=PROMETHEUS_TEXT)

    async def api(request: Request) -> Response:
        return await handle_api(node, request, seen_admin_tokens)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/{name:str}", api, methods=["POST"]),
            *whip_routes(node),
            *page_routes(node),
        ],
        lifespan=lifespan,
        middleware=[Middleware(RefuseOverCapacity, metrics=node.metrics)],
    )
    app.state.edge = node
    app.state.connections = connections
    return app


__all__ = ["RefuseOverCapacity", "create_app", "rtc_entry"]
