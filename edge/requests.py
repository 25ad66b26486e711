"""What the edge does with each frame a client sends (docs/protocol.md, "Requests").

`handle_frame` is the only door: it rate-limits, decodes, checks the session's state and
grant, and dispatches to one handler per request type. Actions become room-log events
(`edge.actions`, the table the server API uses too) with ``reply_to`` = the session's
subject and ``req`` = the frame's id; the statekeeper's `ack`
or `error` comes back on that subject and is forwarded as it is. Reads go to the
statekeeper over NATS request/reply; data messages are published straight to the room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import msgspec

from access.rules import Refusal, refuse_publish, refuse_publish_data, refuse_subscribe
from edge.actions import Origin, to_event
from edge.bus import BusUnavailable
from edge.closecodes import close_code
from edge.entry import on_join
from edge.media import (
    on_answer,
    on_candidate,
    on_offer,
    on_restart_ice,
    on_set_track_layers,
    on_set_video_quality,
)
from edge.metrics import INVALID_TYPE
from edge.session import EdgeSession, EdgeSessionState
from schemas.api import ListParticipantsRequest
from schemas.client import (
    Ack,
    DataReceived,
    Error,
    GetParticipants,
    Join,
    Leave,
    LowerHand,
    MuteTrack,
    ParticipantsPage,
    Ping,
    Pong,
    PublishData,
    PublishTrack,
    RaiseHand,
    RestartIce,
    SetAttributes,
    SetMetadata,
    SetTrackLayers,
    SetVideoQuality,
    SignalAnswer,
    SignalCandidate,
    SignalOffer,
    Subscribe,
    UnpublishTrack,
    Unsubscribe,
)
from schemas.clock import now_ms
from schemas.codec import MAX_FRAME_BYTES, Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.streams import data_limit
from schemas.subjects import room_data

log = logging.getLogger("stagecast.edge")

Handler = Callable[[EdgeSession, Any], Awaitable[None]]


_PEEK_LIMIT = 64 * 1024


def peek_request_id(data: bytes | None, limit: int = _PEEK_LIMIT) -> int | None:
    """The `id` of a frame that was not decoded, if it has one and is at most `limit` bytes."""
    if data is None or len(data) > limit:
        return None
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if type(value) is int else None


async def handle_frame(session: EdgeSession, data: bytes | None, text: str | None) -> None:
    """Handle one frame from the client. Never raises for anything the client sent."""
    metrics = session.node.metrics
    if not session.guard.admit():
        code = ErrorCode.RATE_LIMITED
        if session.guard.flooding:
            session.error(None, code, "sustained flood: closing")
            session.end(close_code(code.value), code.value)
        else:
            session.error(peek_request_id(data), code, "too many frames: slow down")
        return
    if data is None:
        metrics.frame_in(INVALID_TYPE)
        session.error(None, ErrorCode.BAD_REQUEST, "frames are binary msgpack, not text")
        return
    if len(data) > MAX_FRAME_BYTES:
        metrics.frame_in(INVALID_TYPE)
        session.error(
            None, ErrorCode.PAYLOAD_TOO_LARGE, f"frame of {len(data)} bytes (limit 1 MiB)"
        )
        return
    try:
        message = decode(data)
    except SchemaError as exc:
        metrics.frame_in(INVALID_TYPE)
        session.error(peek_request_id(data, MAX_FRAME_BYTES), exc.code, str(exc))
        return
    metrics.frame_in(message.TYPE)
    req: int | None = getattr(message, "id", None)
    handler = HANDLERS.get(type(message))
    if handler is None:
        session.error(req, ErrorCode.UNKNOWN_TYPE, f"{message.TYPE!r} is not a client request")
        return
    if type(message) not in ANY_STATE and session.state is not EdgeSessionState.JOINED:
        session.error(req, ErrorCode.NOT_JOINED, "join first")
        return
    try:
        await handler(session, message)
    except BusUnavailable as exc:
        session.error(req, ErrorCode.UNAVAILABLE, str(exc))
    except Exception:
        log.exception("session %s: %s failed", session.sid, message.TYPE)
        session.error(req, ErrorCode.INTERNAL, f"{message.TYPE} failed")


# --------------------------------------------------------------------------- session


async def on_leave(session: EdgeSession, message: Leave) -> None:
    session.leave_req = message.id
    try:
        await on_action(session, message)
    except BusUnavailable:
        session.leave_req = None
        raise
    session.state = EdgeSessionState.CLOSING  # the ack (or error) closes it with CLIENT_LEFT

    def close_unanswered() -> None:
        session.end(1000, ErrorCode.CLIENT_LEFT.value, server_ended=True)

    asyncio.get_running_loop().call_later(session.node.config.request_timeout, close_unanswered)


async def on_ping(session: EdgeSession, message: Ping) -> None:
    session.send(encode(Pong(id=message.id, at=message.at, server_at=now_ms())), Pong.TYPE)


# --------------------------------------------------------------------------- actions


async def on_action(session: EdgeSession, message: Message) -> None:
    """Append an action's event (`edge.actions`); the statekeeper acks it (or errs) on the
    session's subject. A request sent again after `UNAVAILABLE` (same id, same socket) is
    appended under the failed attempt's message id, so it is stored at most once; a reply
    that does not come is asked for (`edge.awaited`)."""
    origin = Origin(
        room_id=session.room_id,
        at=now_ms(),
        reply_to=session.subject,
        sid=session.sid,
        req=getattr(message, "id", 0),
    )
    event = to_event(message, origin)
    if event is None:
        raise TypeError(f"{message.TYPE} is not an action")
    kind = event.TYPE
    msg_id = session.retried.msg_id(origin.req, kind, lambda: session.next_msg_id(kind))
    try:
        seq = await session.node.bus.append(event, msg_id)
    except BusUnavailable:
        # Maybe stored all the same: a retry of this request reuses the id (`edge.retried`).
        session.retried.failed(origin.req, kind, msg_id)
        raise
    # Its reply comes on the session's subject, unless a NATS link was down when it was
    # sent, or this append was a duplicate of a copy answered then: asked for if it does
    # not come (`edge.awaited`).
    session.awaiting().appended(origin.req, seq)


def _refused(session: EdgeSession, req: int, refusal: Refusal) -> None:
    session.error(req, refusal.code, refusal.reason)


async def on_publish_track(session: EdgeSession, message: PublishTrack) -> None:
    refusal = refuse_publish(session.is_viewer, session.grant)
    if refusal is not None:
        return _refused(session, message.id, refusal)
    await on_action(session, message)


async def on_subscription(session: EdgeSession, message: Subscribe | Unsubscribe) -> None:
    refusal = refuse_subscribe(session.grant)
    if refusal is not None:
        return _refused(session, message.id, refusal)
    await on_action(session, message)


async def on_publish_data(session: EdgeSession, message: PublishData) -> None:
    limit = data_limit(message.topic)
    if len(message.payload) > limit:  # the schema admits a reserved topic's larger limit
        return session.error(
            message.id, ErrorCode.PAYLOAD_TOO_LARGE, f"payload: larger than {limit} bytes"
        )
    refusal = refuse_publish_data(session.grant)
    if refusal is not None:
        return _refused(session, message.id, refusal)
    frame = DataReceived(
        payload=message.payload,
        sender_id=session.participant_id,
        sender_sid=session.sid,
        topic=message.topic,
        reliable=message.reliable,
        destination_ids=message.destination_ids,
    )
    data = encode(frame)
    if not session.node.fanout.admit_data(session.room_id, session.sid, len(data)):
        session.node.metrics.data_sender_refusals += 1
        config = session.node.config
        return session.error(
            message.id,
            ErrorCode.RATE_LIMITED,
            f"over the data budget of {config.data_bytes_per_s} bytes/s "
            f"(burst {config.data_burst_bytes}): this {len(data)}-byte message was not sent",
        )
    await session.node.bus.publish(room_data(session.room_id), data)
    session.send(encode(Ack(id=message.id)), Ack.TYPE)


async def on_get_participants(session: EdgeSession, message: GetParticipants) -> None:
    request = ListParticipantsRequest(
        room_id=session.room_id, tier=message.tier, limit=message.limit, cursor=message.cursor
    )
    reply, _data = await session.node.bus.request(request)
    answer: Message
    if isinstance(reply, (ParticipantsPage, Error)):
        answer = msgspec.structs.replace(reply, id=message.id)
    else:
        answer = Error(id=message.id, code=ErrorCode.INTERNAL.value, message="unexpected reply")
    if isinstance(answer, Error):
        session.node.metrics.error(answer.code)
    session.send(encode(answer), answer.TYPE)


HANDLERS: dict[type[Message], Handler] = {
    Join: on_join,
    Leave: on_leave,
    Ping: on_ping,
    PublishTrack: on_publish_track,
    UnpublishTrack: on_action,
    MuteTrack: on_action,
    SetMetadata: on_action,
    SetAttributes: on_action,
    RaiseHand: on_action,
    LowerHand: on_action,
    Subscribe: on_subscription,
    Unsubscribe: on_subscription,
    PublishData: on_publish_data,
    GetParticipants: on_get_participants,
    SignalOffer: on_offer,
    SignalAnswer: on_answer,
    SignalCandidate: on_candidate,
    RestartIce: on_restart_ice,
    SetVideoQuality: on_set_video_quality,
    SetTrackLayers: on_set_track_layers,
}
"""One handler per request type; any other known type is answered `UNKNOWN_TYPE`."""

ANY_STATE: frozenset[type[Message]] = frozenset({Join, Ping})
"""Requests allowed before the join (the rest answer `NOT_JOINED`)."""

__all__ = ["HANDLERS", "handle_frame"]
