"""The join and resume flows of a socket (docs/protocol.md, "Connecting").

Join: verify the token, settle the room id and the participant id, make the session sid,
subscribe the room's fan-out, append `JoinRequested` and wait for the statekeeper's
`joined` or `error` on the session's subject (`Session.on_direct` finishes the join there,
filling in the resume token). Resume: verify the resume token and append
`ResumeRequested` for the same sid instead. Every failure is an error frame and a close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets

from edge.bus import BusUnavailable
from edge.closecodes import TRY_AGAIN_LATER, close_code
from edge.resume import ResumeRefused, verify_resume_token
from edge.session import Session
from schemas.client import Join
from schemas.clock import now_ms
from schemas.errors import ErrorCode
from schemas.log import JoinRequested, LogEvent, ResumeRequested
from schemas.subjects import room_token
from stagecast.errors import InvalidToken, TokenExpired
from stagecast.tokens import verify_token

SPENT = "this resume token was used already or is stale; join again"


def new_sid() -> str:
    """A session sid, ``PA_`` + 16 random url-safe characters."""
    return "PA_" + secrets.token_urlsafe(12)


def new_participant_id() -> str:
    """A participant id for a token without one, ``p-`` + 12 random url-safe characters."""
    return "p-" + secrets.token_urlsafe(9)


def keyed_ids(api_key: str, token_id: str, room_id: str, join_key: str) -> tuple[str, str]:
    """The sid and generated participant id of a join with a `join_key`: the same on every
    edge for every retry of one connect, different for any other token, room or key."""
    material = "\x1f".join((api_key, token_id, room_id, join_key)).encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(material).digest()).decode()
    return "PA_" + digest[:16], "p-" + digest[16:28]


def _refuse_code(session: Session, req: int, code: ErrorCode, message: str) -> None:
    session.refuse(req, code, message, close_code(code.value))


def settle_room(token_room: str | None, asked: str | None) -> str | tuple[ErrorCode, str]:
    """The room a join goes to, or why it cannot go anywhere."""
    if token_room is not None and asked is not None and asked != token_room:
        return ErrorCode.INVALID_PERMISSIONS, "the token is for another room"
    room_id = token_room if token_room is not None else asked
    if not room_id:
        return ErrorCode.BAD_REQUEST, "room_id is required with a roomless token"
    try:
        room_token(room_id)
    except ValueError as exc:
        return ErrorCode.BAD_REQUEST, f"room_id: {exc}"
    return room_id


async def join(session: Session, message: Join) -> None:
    """A fresh join (see the module docstring)."""
    config = session.node.config
    token = message.token or session.upgrade_token or ""
    try:
        claims = verify_token(token, config.secret_for)
    except TokenExpired as exc:
        return _refuse_code(session, message.id, ErrorCode.TOKEN_EXPIRED, exc.message)
    except InvalidToken as exc:
        return _refuse_code(session, message.id, ErrorCode.INVALID_TOKEN, exc.message)
    room = settle_room(claims.room_id, message.room_id)
    if isinstance(room, tuple):
        return _refuse_code(session, message.id, *room)
    if message.join_key:
        sid, generated = keyed_ids(claims.api_key, claims.token_id, room, message.join_key)
        session.join_key = message.join_key
        await _supersede(session, sid)
    else:
        sid, generated = new_sid(), new_participant_id()
    session.enter_room(room, sid, claims.participant_id or generated)
    session.is_viewer = claims.is_viewer
    session.grant = claims.grant
    session.token_expires_at = claims.expires_at
    event = JoinRequested(
        room_id=room,
        at=now_ms(),
        sid=sid,
        participant_id=session.participant_id,
        name=claims.name or message.name or "",
        is_viewer=claims.is_viewer,
        kind=claims.kind,
        grant=claims.grant,
        metadata=claims.metadata,
        attributes=claims.attributes,
        edge_id=session.node.edge_id,
        token_id=claims.token_id,
        token_expires_at=claims.expires_at * 1000,
        reply_to=session.subject,
        req=message.id,
    )
    await _enter(session, message.id, event, session.next_msg_id("join"))


async def resume(session: Session, message: Join) -> None:
    """Resume a session whose socket dropped (see the module docstring)."""
    config = session.node.config
    try:
        facts = verify_resume_token(message.resume or "", config.secret_for)
    except ResumeRefused as exc:
        return _refuse_code(session, message.id, ErrorCode.RESUME_FAILED, str(exc))
    previous = session.node.sessions.get(facts.sid)
    if previous is not None and previous is not session and facts.epoch < previous.epoch:
        # A spent token, and the session it names lives on this edge: leave it alone.
        return _refuse_code(session, message.id, ErrorCode.RESUME_FAILED, SPENT)
    session.enter_room(facts.room_id, facts.sid, facts.participant_id)
    session.is_viewer = facts.tier == "viewer"
    session.grant = facts.grant
    session.token_expires_at = facts.expires_at
    session.resuming = True
    await _supersede(session, facts.sid)
    event = ResumeRequested(
        room_id=facts.room_id,
        at=now_ms(),
        sid=facts.sid,
        edge_id=session.node.edge_id,
        reply_to=session.subject,
        req=message.id,
        epoch=facts.epoch,
        room_sid=facts.room_sid,
    )
    await _enter(session, message.id, event, session.next_msg_id(event.TYPE))


async def _supersede(session: Session, sid: str) -> None:
    """Another socket of this edge holds the same session: close it quietly, and let it
    finish telling the log whatever it was telling it before this socket's event goes in."""
    previous = session.node.sessions.get(sid)
    if previous is not None and previous is not session:
        previous.supersede()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(previous.detached.wait(), session.node.config.join_timeout)


async def _enter(session: Session, req: int, event: LogEvent, msg_id: str) -> None:
    """Route replies, subscribe the room, append, and wait for the statekeeper's answer."""
    session.node.register(session)
    try:
        await session.subscribe_room()
        session.join_appended = True  # withdrawing a join that never landed is harmless
        await session.node.bus.append(event, msg_id)
    except BusUnavailable as exc:
        session.refuse(req, ErrorCode.UNAVAILABLE, str(exc), TRY_AGAIN_LATER)
        return
    try:
        await asyncio.wait_for(session.join_done.wait(), session.node.config.join_timeout)
    except TimeoutError:
        session.refuse(
            req, ErrorCode.UNAVAILABLE, "the statekeeper did not answer the join", TRY_AGAIN_LATER
        )


__all__ = ["join", "new_participant_id", "new_sid", "resume", "settle_room"]
