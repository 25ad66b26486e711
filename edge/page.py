"""The browser side of the edge: the demo page, the JS SDK's files, and dev-only endpoints.

``GET /`` is the demo page (`static/index.html`, told the edge's id and whether it is in
dev mode); ``GET /static/<path>`` serves the files of `edge/static/` (the SDK
`stagecast.js` and the modules it imports, among them the vendored @msgpack/msgpack in
`vendor/msgpack/`, the page's `app.js` and `style.css`) with
explicit content types, an ETag, and ``Cache-Control: no-store`` in dev mode (edit, reload).

Dev mode only (`EdgeConfig.dev_mode`; the routes do not exist otherwise, so they answer
404): ``POST /dev/token`` mints a participant token with the edge's own api key and secret,
so the page can join without a backend; ``POST /dev/promote`` moves a participant between
the audience and the stage on behalf of a moderator whose token it verifies (the server API
`update_participant`, which needs an admin token a browser must never hold). Outside dev
mode an application's backend mints tokens and calls `RoomService.update_participant`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from html import escape
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from access.tokens import generate_token, verify_token
from edge.bus import BusUnavailable
from edge.node import EdgeNode
from schemas.api import ParticipantReply
from schemas.client import Error
from schemas.client_errors import StagecastError
from schemas.clock import now_ms
from schemas.log import ParticipantUpdateRequested
from schemas.models import ID_CHARS, Grant
from schemas.subjects import room_token

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_FILE_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/){0,3}[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
"""A static file's path under `static/`: up to three folders (`vendor/msgpack/utils/`), each
segment starting with a letter or digit, so never `..` and never a dotfile."""
_DEV_FLAG = "{{DEV_MODE}}"
_EDGE_ID = "{{EDGE_ID}}"
MAX_JSON_BYTES = 16 * 1024
DEV_TOKEN_TTL = 6 * 3600

SPEAKER_GRANT = Grant()
"""A speaker's grant: publish, subscribe, send and receive data."""
VIEWER_GRANT = Grant(can_publish=False, can_publish_data=False)
"""An audience member's grant: watch and receive data; raising a hand needs no grant."""


def routes(node: EdgeNode) -> list[BaseRoute]:
    """The page, the static files and, in dev mode only, the dev endpoints."""
    found: list[BaseRoute] = [
        Route("/", _home(node), methods=["GET"]),
        Route("/static/{name:path}", _static(node), methods=["GET"]),
    ]
    if node.config.dev_mode:
        found += [
            Route("/dev/token", _dev_token(node), methods=["POST"]),
            Route("/dev/promote", _dev_promote(node), methods=["POST"]),
        ]
    return found


def _cache_control(node: EdgeNode) -> str:
    return "no-store" if node.config.dev_mode else "no-cache"


def _home(node: EdgeNode) -> Any:
    async def home(request: Request) -> Response:
        html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        html = html.replace(_DEV_FLAG, "true" if node.config.dev_mode else "false")
        html = html.replace(_EDGE_ID, escape(node.edge_id))
        return HTMLResponse(html, headers={"Cache-Control": _cache_control(node)})

    return home


def _static(node: EdgeNode) -> Any:
    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC_DIR / name
        media_type = CONTENT_TYPES.get(path.suffix)
        if not _FILE_NAME.fullmatch(name) or media_type is None or not path.is_file():
            return Response("not found", status_code=404, media_type="text/plain")
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": _cache_control(node)}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    return static


# --------------------------------------------------------------------------- dev mode only


class BadInput(Exception):
    """A dev endpoint's request body is not what it takes (answered 400)."""


def _refuse(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_JSON_BYTES:
        raise BadInput(f"the body is over {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise BadInput("the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadInput("the body is a JSON object")
    return value


def _text(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise BadInput(f"{key}: required")
        return None
    if not isinstance(value, str) or len(value) > ID_CHARS:
        raise BadInput(f"{key}: a string of at most {ID_CHARS} characters")
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadInput(f"{key}: true or false")
    return value


def _room(body: dict[str, Any]) -> str:
    room = _text(body, "room", required=True)
    assert room is not None
    try:
        room_token(room)
    except ValueError as exc:
        raise BadInput(f"room: {exc}") from None
    return room


def _dev_token(node: EdgeNode) -> Any:
    async def dev_token(request: Request) -> Response:
        """``{room, identity?, name?, viewer?, host?}`` -> ``{token, identity, room}``.

        `viewer` mints an audience token; `host` adds the moderator grant (`canModerate`:
        hand raises, promotion through ``/dev/promote``). A missing identity gets a fresh
        one made from the name.
        """
        try:
            body = await _json_body(request)
            room = _room(body)
            name = _text(body, "name") or ""
            identity = _text(body, "identity") or _identity_for(name)
            viewer, host = _flag(body, "viewer"), _flag(body, "host")
        except BadInput as exc:
            return _refuse(400, "BAD_REQUEST", str(exc))
        grant = msgspec.structs.replace(
            VIEWER_GRANT if viewer else SPEAKER_GRANT, can_moderate=host
        )
        config = node.config
        token = generate_token(
            config.api_key,
            config.api_secret,
            room_id=room,
            participant_id=identity,
            name=name,
            is_viewer=viewer,
            grant=grant,
            ttl=DEV_TOKEN_TTL,
        )
        return JSONResponse({"token": token, "identity": identity, "room": room})

    return dev_token


def _identity_for(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "guest"
    return f"{slug}-{secrets.token_hex(3)}"


def _dev_promote(node: EdgeNode) -> Any:
    async def dev_promote(request: Request) -> Response:
        """``{room, identity, viewer?}`` with ``Authorization: Bearer <moderator token>``.

        Moves `identity` to the stage (`viewer` false, the default: speaker grant, hand
        lowered) or to the audience (`viewer` true). The bearer must be a participant token
        of the same room with `canModerate`. Answers the participant as JSON.
        """
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not bearer.strip():
            return _refuse(401, "INVALID_TOKEN", "Authorization: Bearer <moderator token>")
        try:
            claims = verify_token(bearer.strip(), node.config.secret_for)
        except StagecastError as exc:
            return _refuse(401, exc.code, exc.message)
        try:
            body = await _json_body(request)
            room = _room(body)
            identity = _text(body, "identity", required=True)
            viewer = _flag(body, "viewer")
        except BadInput as exc:
            return _refuse(400, "BAD_REQUEST", str(exc))
        assert identity is not None
        if claims.room_id != room or not claims.grant.can_moderate:
            return _refuse(403, "INVALID_PERMISSIONS", "a moderator token of this room is needed")
        at = now_ms()

        def event(inbox: str) -> ParticipantUpdateRequested:
            return ParticipantUpdateRequested(
                room_id=room,
                at=at,
                participant_id=identity,
                is_viewer=viewer,  # the tier change picks the grant and lowers the hand
                reply_to=inbox,
            )

        try:
            reply, _data = await node.bus.append_and_wait(event, f"dev:{secrets.token_urlsafe(12)}")
        except BusUnavailable as exc:
            return _refuse(503, "UNAVAILABLE", str(exc))
        if isinstance(reply, Error):
            status = 404 if reply.code.endswith("_NOT_FOUND") else 400
            return _refuse(status, reply.code, reply.message)
        if not isinstance(reply, ParticipantReply):
            return _refuse(500, "INTERNAL", f"unexpected outcome {reply.TYPE}")
        info = reply.participant
        return JSONResponse({"id": info.id, "sid": info.sid, "is_viewer": info.is_viewer})

    return dev_promote


__all__ = ["CONTENT_TYPES", "STATIC_DIR", "routes"]
