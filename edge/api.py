"""The server API over HTTP: ``POST /api/<name>`` with a msgpack `schemas.api` request.

The body's type tag is ``api.<name>`` (``/api/create_room`` carries `CreateRoomRequest`);
`Authorization: Bearer <admin token>` (`stagecast.generate_admin_token`) signs it, and the
token's grants must cover the request (`access.admin.needed_for`: `roomCreate`,
`roomList`, or `roomAdmin` for the request's room; else `INVALID_PERMISSIONS`). A token
scoped to a room lists that room only. An admin token signs one call per edge: presented
again to the same edge it is `INVALID_TOKEN` (`edge.replays.SeenTokens`). Reads
are NATS requests to the statekeeper; writes are appended to the room log with a fresh
inbox as ``reply_to`` and answered with the statekeeper's outcome; `SendDataRequest` is
published to the room's data channel. The reply body is the msgpack reply message
(`RoomReply`, `RoomListReply`, `ParticipantsPage`, `ParticipantReply`, `OkReply`) or an
`Error`, whose code sets the HTTP status (`http_status`).
"""

from __future__ import annotations

import secrets

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from access.admin import AdminGrant, needed_for
from access.tokens import DEFAULT_LEEWAY, AdminClaims, verify_admin_token
from edge.actions import EVENTS, Origin
from edge.bus import BusUnavailable
from edge.node import EdgeNode
from edge.replays import SeenTokens
from schemas.agents import ListDispatchesRequest
from schemas.api import (
    GetParticipantRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    OkReply,
    SendDataRequest,
)
from schemas.client import DataReceived, Error
from schemas.client_errors import InvalidPermissions, InvalidToken, TokenExpired
from schemas.clock import now_ms
from schemas.codec import MAX_FRAME_BYTES, Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.log import (
    LogEvent,
)
from schemas.subjects import room_data, room_token

MEDIA_TYPE = "application/msgpack"

_STATUS: dict[str, int] = {
    ErrorCode.INVALID_TOKEN.value: 401,
    ErrorCode.TOKEN_EXPIRED.value: 401,
    ErrorCode.INVALID_PERMISSIONS.value: 403,
    ErrorCode.ROOM_NOT_FOUND.value: 404,
    ErrorCode.PARTICIPANT_NOT_FOUND.value: 404,
    ErrorCode.TRACK_NOT_FOUND.value: 404,
    ErrorCode.DISPATCH_NOT_FOUND.value: 404,
    ErrorCode.NOT_PUBLISHED.value: 404,
    ErrorCode.RATE_LIMITED.value: 429,
    ErrorCode.UNAVAILABLE.value: 503,
    ErrorCode.INTERNAL.value: 500,
}

READS: tuple[type[Message], ...] = (
    ListRoomsRequest,
    ListParticipantsRequest,
    GetParticipantRequest,
    ListDispatchesRequest,
)


def http_status(code: str) -> int:
    """The HTTP status of an error code (400 for every client mistake without its own)."""
    return _STATUS.get(code, 400)


def _reply(data: bytes, status: int = 200) -> Response:
    return Response(data, status_code=status, media_type=MEDIA_TYPE)


def _error(code: ErrorCode | str, message: str) -> Response:
    value = code.value if isinstance(code, ErrorCode) else code
    return _reply(encode(Error(code=value, message=message[:1000])), http_status(value))


async def _body(request: Request) -> bytes | None:
    """The request body, or None when it is over 1 MiB (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FRAME_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FRAME_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _authenticate(node: EdgeNode, request: Request) -> AdminClaims | Response:
    """The claims of the request's admin token, or the refusal to answer."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(ErrorCode.INVALID_TOKEN, "Authorization: Bearer <admin token> is required")
    try:
        return verify_admin_token(token.strip(), node.config.secret_for)
    except TokenExpired as exc:
        return _error(ErrorCode.TOKEN_EXPIRED, exc.message)
    except InvalidPermissions as exc:
        return _error(ErrorCode.INVALID_PERMISSIONS, exc.message)
    except InvalidToken as exc:
        return _error(ErrorCode.INVALID_TOKEN, exc.message)


def _scoped(message: Message, grant: AdminGrant) -> Message:
    """`list_rooms` under a room-scoped token names that room only."""
    if not isinstance(message, ListRoomsRequest) or grant.room is None:
        return message
    wanted = message.room_ids
    room_ids = (grant.room,) if wanted is None or grant.room in wanted else ()
    return msgspec.structs.replace(message, room_ids=room_ids)


async def handle_api(node: EdgeNode, request: Request, seen: SeenTokens | None = None) -> Response:
    """``POST /api/<name>`` (see the module docstring); `seen`: this edge's used tokens."""
    claims = _authenticate(node, request)
    if isinstance(claims, Response):
        return claims
    grant = claims.grant
    body = await _body(request)
    if body is None:
        return _error(ErrorCode.PAYLOAD_TOO_LARGE, f"the body is over {MAX_FRAME_BYTES} bytes")
    try:
        message = decode(body)
    except SchemaError as exc:
        return _error(exc.code, str(exc))
    name = request.path_params.get("name", "")
    if f"api.{name}" != message.TYPE:
        return _error(ErrorCode.BAD_REQUEST, f"/api/{name[:64]} does not take {message.TYPE}")
    room_id = getattr(message, "room_id", None)
    if isinstance(room_id, str):
        try:
            room_token(room_id)
        except ValueError as exc:
            return _error(ErrorCode.BAD_REQUEST, f"room_id: {exc}")
        if not room_id:
            return _error(ErrorCode.BAD_REQUEST, "room_id: must not be empty")
    needed = needed_for(message)
    if needed is None:
        return _error(ErrorCode.UNKNOWN_TYPE, f"{message.TYPE} is not a server API request")
    refusal = grant.refusal(needed)
    if refusal is not None:
        return _error(ErrorCode.INVALID_PERMISSIONS, f"{message.TYPE}: {refusal}")
    if seen is not None and not seen.first_use(claims.token_id, claims.expires_at + DEFAULT_LEEWAY):
        return _error(
            ErrorCode.INVALID_TOKEN,
            "this admin token already signed a call on this edge: mint one per call",
        )
    try:
        return await _answer(node, _scoped(message, grant))
    except BusUnavailable as exc:
        return _error(ErrorCode.UNAVAILABLE, str(exc))


async def _answer(node: EdgeNode, message: Message) -> Response:
    if isinstance(message, READS):
        reply, data = await node.bus.request(message)
        return _forward(reply, data)
    if isinstance(message, SendDataRequest):
        frame = DataReceived(
            payload=message.payload,
            topic=message.topic,
            reliable=message.reliable,
            destination_ids=message.destination_ids,
        )
        await node.bus.publish(room_data(message.room_id), encode(frame))
        return _reply(encode(OkReply()))
    build = EVENTS.get(type(message))
    if build is None:
        return _error(ErrorCode.UNKNOWN_TYPE, f"{message.TYPE} is not a server API request")
    room_id: str = getattr(message, "room_id", "")
    at = now_ms()

    def make(inbox: str) -> LogEvent:
        return build(message, Origin(room_id=room_id, at=at, reply_to=inbox))

    reply, data = await node.bus.append_and_wait(make, f"api:{secrets.token_urlsafe(12)}")
    return _forward(reply, data)


def _forward(reply: Message, data: bytes) -> Response:
    if isinstance(reply, Error):
        return _reply(data, http_status(reply.code))
    return _reply(data)


__all__ = ["MEDIA_TYPE", "handle_api", "http_status"]
