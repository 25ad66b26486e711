"""The join and resume flows of a socket (docs/protocol.md, "Connecting").

Join: verify the token, settle the room id and the participant id, make the session sid,
subscribe the room's fan-out, append `JoinRequested` and wait for the statekeeper's
`joined` or `error` on the session's subject (`EdgeSession.on_direct` finishes the join
there, filling in the resume token). Resume: verify the resume token and append
`ResumeRequested` for the same sid instead. Every failure is an error frame and a close.
The join's bookkeeping is the session's `JoinAttempt` (edge/join.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from edge.bus import BusBusy, BusUnavailable
from edge.closecodes import TRY_AGAIN_LATER, close_code
from edge.join import JoinAttempt, keyed_ids, new_participant_id, new_sid, settle_room
from edge.resume import ResumeRefused, verify_resume_token
from edge.session import EdgeSession
from schemas.client import Join
from schemas.client_errors import InvalidToken, TokenExpired
from schemas.clock import now_ms
from schemas.errors import ErrorCode
from schemas.log import JoinRequested, LogEvent, ResumeRequested

log = logging.getLogger("stagecast.edge")

SPENT = "this resume token was used already or is stale; join again"


async def on_join(session: EdgeSession, message: Join) -> None:
    """The `join` frame: a fresh join or a resume; a second one is `ALREADY_JOINED`; one
    beyond the edge's joins in flight is `SERVER_BUSY` (the socket may send it again)."""
    if not session.can_join:
        session.error(message.id, ErrorCode.ALREADY_JOINED, "this socket already joined")
        return
    gate = session.node.join_gate
    ticket = gate.enter(time.monotonic())
    if ticket is None:
        session.node.metrics.joins_busy += 1
        why = gate.why_busy() or "this edge is busy"
        session.busy(message.id, gate.retry_after_ms, f"{why}: try again later")
        return
    try:
        attempt = session.begin_join(message.id)
        assert attempt is not None  # can_join said so, and nothing ran in between
        if message.resume:
            await resume(session, attempt, message)
        else:
            await join(session, attempt, message)
    except BusUnavailable as exc:
        session.refuse(message.id, ErrorCode.UNAVAILABLE, str(exc), TRY_AGAIN_LATER)
    except Exception:  # a join that broke half-way must not leave the socket stuck
        log.exception("join failed")
        session.refuse(message.id, ErrorCode.INTERNAL, "the join failed", 1011)
    finally:
        gate.leave(ticket, time.monotonic())


def _refuse_code(session: EdgeSession, req: int, code: ErrorCode, message: str) -> None:
    session.refuse(req, code, message, close_code(code.value))


async def join(session: EdgeSession, attempt: JoinAttempt, message: Join) -> None:
    """A fresh join (see the module docstring)."""
    token = message.token or session.upgrade_token or ""
    try:
        claims = session.node.tokens.verify(token)
    except TokenExpired as exc:
        return _refuse_code(session, message.id, ErrorCode.TOKEN_EXPIRED, exc.message)
    except InvalidToken as exc:
        return _refuse_code(session, message.id, ErrorCode.INVALID_TOKEN, exc.message)
    room = settle_room(claims.room_id, message.room_id)
    if isinstance(room, tuple):
        return _refuse_code(session, message.id, *room)
    if message.join_key:
        sid, generated = keyed_ids(claims.api_key, claims.token_id, room, message.join_key)
        attempt.key = message.join_key
        await _supersede(session, sid)
    else:
        sid, generated = new_sid(), new_participant_id()
    session.enter_room(
        room,
        sid,
        claims.participant_id or generated,
        is_viewer=claims.is_viewer,
        grant=claims.grant,
        token_expires_at=claims.expires_at,
    )
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
    await _enter(session, attempt, event, session.next_msg_id("join"))


async def resume(session: EdgeSession, attempt: JoinAttempt, message: Join) -> None:
    """Resume a session whose socket dropped (see the module docstring)."""
    config = session.node.config
    try:
        facts = verify_resume_token(message.resume or "", config.secret_for)
    except ResumeRefused as exc:
        return _refuse_code(session, message.id, ErrorCode.RESUME_FAILED, str(exc))
    previous = session.node.resident(facts.sid)
    if previous is not None and previous is not session and facts.epoch < previous.epoch:
        # A spent token, and the session it names lives on this edge: leave it alone.
        return _refuse_code(session, message.id, ErrorCode.RESUME_FAILED, SPENT)
    session.enter_room(
        facts.room_id,
        facts.sid,
        facts.participant_id,
        is_viewer=facts.tier == "viewer",
        grant=facts.grant,
        token_expires_at=facts.expires_at,
    )
    attempt.resuming = True
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
    await _enter(session, attempt, event, session.next_msg_id(event.TYPE))


async def _supersede(session: EdgeSession, sid: str) -> None:
    """Another socket of this edge holds the same session: close it quietly, and let it
    finish telling the log whatever it was telling it before this socket's event goes in."""
    previous = session.node.resident(sid)
    if previous is not None and previous is not session:
        previous.supersede()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(previous.detached.wait(), session.node.config.join_timeout)


async def _enter(session: EdgeSession, attempt: JoinAttempt, event: LogEvent, msg_id: str) -> None:
    """Route replies, subscribe the room, append, and wait for the statekeeper's answer."""
    session.node.register(session)
    try:
        await session.subscribe_room()
        attempt.appended = True  # withdrawing a join that never landed is harmless
        await session.node.bus.append(event, msg_id)
    except BusUnavailable as exc:
        if attempt.done.is_set():
            # The event was stored and the statekeeper answered before the append's ack
            # came (or before it timed out): the join stands (the storm's 1013 drops).
            return
        code = ErrorCode.SERVER_BUSY if isinstance(exc, BusBusy) else ErrorCode.UNAVAILABLE
        session.refuse(attempt.req, code, str(exc), TRY_AGAIN_LATER)
        return
    if not await attempt.done.wait_for(session.node.config.join_timeout):
        # Not answered in time. (One answered in the same loop pass as the timeout fired,
        # on a saturated edge, stands: refusing it would close a joined socket with 1013,
        # the 20,000-viewer storm's `dropped_after_join`.)
        session.refuse(
            attempt.req,
            ErrorCode.UNAVAILABLE,
            "the statekeeper did not answer the join",
            TRY_AGAIN_LATER,
        )


__all__ = ["join", "on_join", "resume"]
