"""The edge's Starlette app: WebSocket signaling, the server API, health, metrics, a page.

Routes: ``/rtc`` (WebSocket, docs/protocol.md), ``POST /api/<name>`` (`edge.api`),
``GET /healthz`` (200 ``ok`` when NATS is connected and the statekeeper answers healthy
within a second, else 503 and the reason), ``GET /metrics`` (Prometheus text), ``GET /``
(the demo page), ``GET /static/<file>`` (the browser SDK and the page's files) and, in dev
mode only, ``POST /dev/token`` and ``POST /dev/promote`` (`edge.page`). The lifespan starts
and stops the `EdgeNode` (the one NATS connection); the node is on ``app.state.edge``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from edge.api import handle_api
from edge.closecodes import close_code
from edge.config import EdgeConfig
from edge.node import EdgeNode
from edge.page import routes as page_routes
from edge.replays import SeenTokens
from edge.session import Session
from schemas.client import Disconnect
from schemas.codec import encode
from schemas.errors import ErrorCode

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def upgrade_token(websocket: WebSocket) -> str | None:
    """A token sent on the upgrade: `Authorization: Bearer` or ``?access_token=``."""
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return websocket.query_params.get("access_token") or None


def create_app(config: EdgeConfig) -> Starlette:
    """The edge as an ASGI app (serve it with uvicorn, or use `edge.main.running_edge`)."""
    node = EdgeNode(config)
    seen_admin_tokens = SeenTokens()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    async def rtc(websocket: WebSocket) -> None:
        if node.draining:
            await websocket.accept()
            code = ErrorCode.SERVER_SHUTDOWN.value
            await websocket.send_bytes(encode(Disconnect(reason=code, can_reconnect=True)))
            await websocket.close(close_code(code), code)
            return
        await Session(node, websocket, upgrade_token(websocket)).run()

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
    )
    app.state.edge = node
    return app


__all__ = ["create_app", "upgrade_token"]
