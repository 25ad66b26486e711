"""The edge's Starlette app: WebSocket signaling, the server API, health, metrics, a page.

Routes: ``/rtc`` (WebSocket, docs/protocol.md), ``POST /api/<name>`` (`edge.api`),
``GET /healthz`` (200 ``ok`` when NATS is connected and the statekeeper answers healthy
within a second, else 503 and the reason), ``GET /metrics`` (Prometheus text), ``GET /``
(the demo page), ``GET /static/<file>`` (the browser SDK and the page's files) and, in dev
mode only, ``POST /dev/token`` and ``POST /dev/promote`` (`edge.page`). The lifespan starts
and stops the `EdgeNode` (the one NATS connection); the node is on ``app.state.edge``, the
`ConnectionLedger` its protocols count connections in on ``app.state.connections``.

A connection refused over a cap (`edge.serving` marks it) is answered here: HTTP 503 with
``TOO_MANY_CONNECTIONS``, or for ``/rtc`` an accept, an `error` frame and close 4019, since a
browser cannot read the status of a refused WebSocket upgrade.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from edge.admission import ConnectionLedger, Refusal
from edge.api import handle_api
from edge.closecodes import close_code
from edge.config import EdgeConfig, overflow_lane
from edge.metrics import EdgeMetrics
from edge.node import EdgeNode
from edge.page import routes as page_routes
from edge.replays import SeenTokens
from edge.requests import handle_frame
from edge.serving import line_of, refusal_of
from edge.session import EdgeSession
from schemas.client import Disconnect, Error
from schemas.codec import encode
from schemas.errors import ErrorCode

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def upgrade_token(websocket: WebSocket) -> str | None:
    """A token sent on the upgrade: `Authorization: Bearer` or ``?access_token=``."""
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return websocket.query_params.get("access_token") or None


async def refuse_socket(websocket: WebSocket, frame: bytes, reason: str) -> None:
    """Accept a socket only to send it one frame and close it with `reason`'s code."""
    await websocket.accept()
    await websocket.send_bytes(frame)
    await websocket.close(close_code(reason), reason)


class RefuseOverCapacity:
    """ASGI middleware: answer the connections refused over a cap (the module docstring)."""

    def __init__(self, app: ASGIApp, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = refusal_of(scope) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code = ErrorCode.TOO_MANY_CONNECTIONS.value
        self.metrics.error(code)
        if scope["type"] == "websocket":
            frame = encode(Error(id=None, code=code, message=refusal.message))
            await refuse_socket(WebSocket(scope, receive, send), frame, code)
            return
        response = _too_many(refusal)
        await response(scope, receive, send)


def _too_many(refusal: Refusal) -> Response:
    body = f"{ErrorCode.TOO_MANY_CONNECTIONS.value}: {refusal.message}"
    return PlainTextResponse(body, status_code=503, headers={"connection": "close"})


def create_app(config: EdgeConfig) -> Starlette:
    """The edge as an ASGI app, served by `edge.main.running_edge` (its ``/rtc`` writes
    frames straight to the transports of `edge.serving`'s WebSocket protocol)."""
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

    async def rtc(websocket: WebSocket) -> None:
        if node.draining:
            code = ErrorCode.SERVER_SHUTDOWN.value
            frame = encode(Disconnect(reason=code, can_reconnect=True))
            await refuse_socket(websocket, frame, code)
            return
        line = line_of(websocket.scope)
        if line is None:
            raise RuntimeError("/rtc needs edge.serving's WebSocket protocol (edge.main)")
        session = EdgeSession(node, websocket, line, upgrade_token(websocket), handle_frame)
        await session.run()

    async def healthz(request: Request) -> Response:
        healthy, reason = await node.health()
        return PlainTextResponse(reason, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(node.metrics.render(), media_type=PROMETHEUS_TEXT)

    async def api(request: Request) -> Response:
        return await handle_api(node, request, seen_admin_tokens)

    app = Starlette(
        routes=[
            WebSocketRoute("/rtc", rtc),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/{name:str}", api, methods=["POST"]),
            *page_routes(node),
        ],
        lifespan=lifespan,
        middleware=[Middleware(RefuseOverCapacity, metrics=node.metrics)],
    )
    app.state.edge = node
    app.state.connections = connections
    return app


__all__ = ["RefuseOverCapacity", "create_app", "refuse_socket", "upgrade_token"]
