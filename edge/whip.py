"""WHIP (RFC 9725) on the edge: ``POST /whip``, ``DELETE /whip/<session>`` (docs/whip.md).

``POST /whip`` takes a participant token (``Authorization: Bearer``; the room from the
token, or ``?room=`` with a roomless one) and an ``application/sdp`` offer, and answers
``201 Created`` with the SDP answer, ``Location: /whip/<session>`` and an ``ETag``. The
session is an `edge.ingress.IngressSession` owned by this edge. ``DELETE`` on the Location
ends it. ``PATCH`` with an ``application/trickle-ice-sdpfrag`` (RFC 8840) hands the
client's trickled candidates to its connection (``204``); one with another ICE ufrag asks
for an ICE restart, which aiortc cannot do in place: ``422``. The server's own candidates
are all in its answer (the forwarder gathers before answering).

Every refusal comes before anything is appended: a bad token (401), no publish grant or
a viewer token (403), an offer that is not usable SDP (400, with the reason).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from access.rules import refuse_publish
from edge.api import http_status
from edge.bus import BusUnavailable
from edge.ingress import IngressRefused, IngressSession
from edge.ingress_sdp import (
    MAX_OFFER_BYTES,
    MalformedFragment,
    MalformedOffer,
    offered_media,
    trickle_fragment,
)
from edge.join import settle_room
from edge.node import EdgeNode
from schemas.client_errors import InvalidToken, TokenExpired
from schemas.errors import ErrorCode

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
ALLOW = "OPTIONS, POST"


def _fail(code: ErrorCode | str, message: str, status: int | None = None) -> Response:
    value = code.value if isinstance(code, ErrorCode) else code
    return PlainTextResponse(f"{value}: {message}"[:2000], status_code=status or http_status(value))


async def _offer_text(request: Request) -> str | Response:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_OFFER_BYTES:
        return _fail(ErrorCode.PAYLOAD_TOO_LARGE, "the offer is over 128 KiB", 413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_OFFER_BYTES:
            return _fail(ErrorCode.PAYLOAD_TOO_LARGE, "the offer is over 128 KiB", 413)
    try:
        return body.decode()
    except UnicodeDecodeError:
        return _fail(ErrorCode.BAD_REQUEST, "the offer is not UTF-8 text", 400)


async def publish(node: EdgeNode, request: Request) -> Response:
    """``POST /whip`` (see the module docstring)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _fail(ErrorCode.INVALID_TOKEN, "Authorization: Bearer <participant token>")
    try:
        claims = node.tokens.verify(token.strip())
    except TokenExpired as exc:
        return _fail(ErrorCode.TOKEN_EXPIRED, exc.message)
    except InvalidToken as exc:
        return _fail(ErrorCode.INVALID_TOKEN, exc.message)
    refusal = refuse_publish(claims.is_viewer, claims.grant)
    if refusal is not None:
        return _fail(refusal.code, refusal.reason)
    room = settle_room(claims.room_id, request.query_params.get("room"))
    if isinstance(room, tuple):
        return _fail(*room)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != SDP:
        return _fail(ErrorCode.BAD_REQUEST, f"the offer must be {SDP}", 415)
    offer = await _offer_text(request)
    if isinstance(offer, Response):
        return offer
    try:
        media = offered_media(offer)
    except MalformedOffer as exc:
        return _fail(ErrorCode.BAD_REQUEST, f"malformed SDP offer: {exc.reason}", 400)
    if node.draining:
        return _fail(ErrorCode.SERVER_SHUTDOWN, "the edge is stopping", 503)
    session = IngressSession(node, room, claims)
    try:
        answer = await session.start(media, offer)
    except IngressRefused as exc:
        node.metrics.error(exc.code)
        return _fail(exc.code, exc.message)
    location = f"/whip/{session.sid}"
    return Response(
        answer,
        status_code=201,
        media_type=SDP,
        headers={
            "location": location,
            "etag": f'"{session.etag}"',
            "access-control-expose-headers": "Location, ETag",
        },
    )


async def trickle(node: EdgeNode, request: Request) -> Response:
    """``PATCH /whip/<session>``: trickled candidates (204), or 412 / 415 / 422 / 400."""
    session = node.resident(request.path_params.get("sid", ""))
    if not isinstance(session, IngressSession):
        return _fail(ErrorCode.PARTICIPANT_NOT_FOUND, "no such WHIP session on this edge", 404)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != SDPFRAG:
        return _fail(ErrorCode.BAD_REQUEST, f"a PATCH carries {SDPFRAG}", 415)
    match = request.headers.get("if-match")
    if match is not None and match.strip() not in ("*", f'"{session.etag}"'):
        return _fail(ErrorCode.BAD_REQUEST, "If-Match does not name this session's ETag", 412)
    text = await _offer_text(request)
    if isinstance(text, Response):
        return text
    try:
        fragment = trickle_fragment(text)
    except MalformedFragment as exc:
        return _fail(ErrorCode.BAD_REQUEST, f"malformed SDP fragment: {exc.reason}", 400)
    if fragment.ufrag is not None and fragment.ufrag != session.ufrag:
        return _fail(
            ErrorCode.BAD_REQUEST,
            "ICE restarts are not supported: end the session and start a new one",
            422,
        )
    try:
        await session.trickle(fragment.candidates)
    except IngressRefused as exc:
        return _fail(exc.code, exc.message)
    except BusUnavailable as exc:
        return _fail(ErrorCode.UNAVAILABLE, str(exc))
    return Response(status_code=204)


async def end(node: EdgeNode, request: Request) -> Response:
    """``DELETE /whip/<session>``: the session leaves the room (404 if not on this edge)."""
    sid = request.path_params.get("sid", "")
    session = node.resident(sid)
    if not isinstance(session, IngressSession):
        return _fail(ErrorCode.PARTICIPANT_NOT_FOUND, "no such WHIP session on this edge", 404)
    await session.leave("DELETE")
    return Response(status_code=200)


def routes(node: EdgeNode) -> list[Route]:
    """The WHIP routes of an edge (`edge.app` adds them)."""

    async def post(request: Request) -> Response:
        return await publish(node, request)

    async def options(request: Request) -> Response:
        return Response(status_code=204, headers={"allow": ALLOW, "accept-post": SDP})

    async def delete(request: Request) -> Response:
        return await end(node, request)

    async def patch(request: Request) -> Response:
        return await trickle(node, request)

    return [
        Route("/whip", post, methods=["POST"]),
        Route("/whip", options, methods=["OPTIONS"]),
        Route("/whip/{sid:str}", delete, methods=["DELETE"]),
        Route("/whip/{sid:str}", patch, methods=["PATCH"]),
    ]


__all__ = ["routes"]
