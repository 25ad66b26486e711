"""What the edge does with each frame a client sends (docs/protocol.md, "Requests").

`handle_frame` is the only door: it rate-limits, decodes, checks the session's state and
grant, and dispatches to one handler per request type. Actions become room-log events with
``reply_to`` = the session's subject and ``req`` = the frame's id; the statekeeper's `ack`
or `error` comes back on that subject and is forwarded as it is. Reads go to the
statekeeper over NATS request/reply; data messages are published straight to the room.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from edge.bus import BusUnavailable
from edge.closecodes import TRY_AGAIN_LATER, close_code
from edge.join import join, resume
from edge.media import on_answer, on_candidate, on_offer, on_restart_ice
from edge.metrics import INVALID_TYPE
from edge.session import Session, SessionState, now_ms, peek_request_id
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
    SignalAnswer,
    SignalCandidate,
    SignalOffer,
    Subscribe,
    UnpublishTrack,
    Unsubscribe,
)
from schemas.codec import MAX_FRAME_BYTES, Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.log import (
    AttributesSet,
    LeaveRequested,
    LogEvent,
    MetadataSet,
    SubscriptionRequested,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.models import HAND_ATTRIBUTE as HAND
from schemas.models import HAND_RAISED as RAISED
from schemas.models import TrackInfo
from schemas.subjects import room_data

log = logging.getLogger("stagecast.edge")

Handler = Callable[[Session, Any], Awaitable[None]]


async def handle_frame(session: Session, data: bytes | None, text: str | None) -> None:
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
    if type(message) not in ANY_STATE and session.state is not SessionState.JOINED:
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


async def on_join(session: Session, message: Join) -> None:
    if session.state is not SessionState.CONNECTING or session.join_req is not None:
        session.error(message.id, ErrorCode.ALREADY_JOINED, "this socket already joined")
        return
    session.join_req = message.id
    try:
        if message.resume:
            await resume(session, message)
        else:
            await join(session, message)
    except BusUnavailable as exc:
        session.refuse(message.id, ErrorCode.UNAVAILABLE, str(exc), TRY_AGAIN_LATER)
    except Exception:  # a join that broke half-way must not leave the socket stuck
        log.exception("join failed")
        session.refuse(message.id, ErrorCode.INTERNAL, "the join failed", 1011)


async def on_leave(session: Session, message: Leave) -> None:
    session.leave_req = message.id
    event = LeaveRequested(
        room_id=session.room_id,
        at=now_ms(),
        sid=session.sid,
        reply_to=session.subject,
        req=message.id,
    )
    try:
        await session.node.bus.append(event, session.next_msg_id(event.TYPE))
    except BusUnavailable:
        session.leave_req = None
        raise
    session.state = SessionState.CLOSING  # the ack (or error) closes it with CLIENT_LEFT

    def close_unanswered() -> None:
        session.end(1000, ErrorCode.CLIENT_LEFT.value, server_ended=True)

    asyncio.get_running_loop().call_later(session.node.config.request_timeout, close_unanswered)


async def on_ping(session: Session, message: Ping) -> None:
    session.send(encode(Pong(id=message.id, at=message.at, server_at=now_ms())), Pong.TYPE)


# --------------------------------------------------------------------------- actions


async def _act(session: Session, event: LogEvent) -> None:
    """Append an action; the statekeeper acks it (or errs) on the session's subject."""
    await session.node.bus.append(event, session.next_msg_id(event.TYPE))


def _base(session: Session, req: int) -> dict[str, Any]:
    return {
        "room_id": session.room_id,
        "at": now_ms(),
        "sid": session.sid,
        "reply_to": session.subject,
        "req": req,
    }


def _denied(session: Session, req: int, why: str) -> None:
    session.error(req, ErrorCode.INVALID_PERMISSIONS, why)


async def on_publish_track(session: Session, message: PublishTrack) -> None:
    if session.is_viewer:
        return _denied(session, message.id, "viewers cannot publish; ask to be promoted")
    if not session.grant.can_publish:
        return _denied(session, message.id, "the grant does not allow publishing")
    track = TrackInfo(
        sid=new_track_sid(), kind=message.kind, source=message.source, name=message.name
    )
    await _act(session, TrackPublishRequested(**_base(session, message.id), track=track))


async def on_unpublish_track(session: Session, message: UnpublishTrack) -> None:
    event = TrackUnpublishRequested(**_base(session, message.id), track_sid=message.track_sid)
    await _act(session, event)


async def on_mute_track(session: Session, message: MuteTrack) -> None:
    event = TrackMuteRequested(
        **_base(session, message.id), track_sid=message.track_sid, muted=message.muted
    )
    await _act(session, event)


async def on_set_metadata(session: Session, message: SetMetadata) -> None:
    await _act(session, MetadataSet(**_base(session, message.id), metadata=message.metadata))


async def on_set_attributes(session: Session, message: SetAttributes) -> None:
    event = AttributesSet(**_base(session, message.id), attributes=message.attributes)
    await _act(session, event)


async def on_raise_hand(session: Session, message: RaiseHand) -> None:
    await _act(session, AttributesSet(**_base(session, message.id), attributes={HAND: RAISED}))


async def on_lower_hand(session: Session, message: LowerHand) -> None:
    await _act(session, AttributesSet(**_base(session, message.id), attributes={HAND: ""}))


async def on_subscription(session: Session, message: Subscribe | Unsubscribe) -> None:
    if not session.grant.can_subscribe:
        return _denied(session, message.id, "the grant does not allow subscribing")
    event = SubscriptionRequested(
        **_base(session, message.id),
        participant_id=message.participant_id,
        kind=message.kind,
        subscribed=isinstance(message, Subscribe),
    )
    await _act(session, event)


async def on_publish_data(session: Session, message: PublishData) -> None:
    if not session.grant.can_publish_data:
        return _denied(session, message.id, "the grant does not allow publishing data")
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


async def on_get_participants(session: Session, message: GetParticipants) -> None:
    request = ListParticipantsRequest(
        room_id=session.room_id, tier=message.tier, limit=message.limit, cursor=message.cursor
    )
    reply, _data = await session.node.bus.request(request)
    answer: Message
    if isinstance(reply, (ParticipantsPage, Error)):
        answer = dataclasses.replace(reply, id=message.id)
    else:
        answer = Error(id=message.id, code=ErrorCode.INTERNAL.value, message="unexpected reply")
    if isinstance(answer, Error):
        session.node.metrics.error(answer.code)
    session.send(encode(answer), answer.TYPE)


def new_track_sid() -> str:
    return "TR_" + secrets.token_urlsafe(9)


HANDLERS: dict[type[Message], Handler] = {
    Join: on_join,
    Leave: on_leave,
    Ping: on_ping,
    PublishTrack: on_publish_track,
    UnpublishTrack: on_unpublish_track,
    MuteTrack: on_mute_track,
    SetMetadata: on_set_metadata,
    SetAttributes: on_set_attributes,
    RaiseHand: on_raise_hand,
    LowerHand: on_lower_hand,
    Subscribe: on_subscription,
    Unsubscribe: on_subscription,
    PublishData: on_publish_data,
    GetParticipants: on_get_participants,
    SignalOffer: on_offer,
    SignalAnswer: on_answer,
    SignalCandidate: on_candidate,
    RestartIce: on_restart_ice,
}
"""One handler per request type; any other known type is answered `UNKNOWN_TYPE`."""

ANY_STATE: frozenset[type[Message]] = frozenset({Join, Ping})
"""Requests allowed before the join (the rest answer `NOT_JOINED`)."""

__all__ = ["HANDLERS", "handle_frame", "new_track_sid"]
