"""What the fold says back: replies to an action's caller, and frames for one session."""

from __future__ import annotations

from schemas import subjects
from schemas.client import Ack, Disconnect, Error
from schemas.codec import Message
from schemas.errors import ErrorCode
from schemas.log import LogEvent
from statekeeper.outcomes import Direct, Outcome
from statekeeper.state import SessionRecord


def reply(event: LogEvent, message: Message, out: list[Outcome]) -> None:
    """Answer the event's caller, if it asked for an answer."""
    if event.reply_to:
        out.append(Direct(event.reply_to, message, answers=True))


def ack(event: LogEvent, out: list[Outcome], sid: str | None = None) -> None:
    """Acknowledge the event's request (with the sid it created, if any)."""
    reply(event, Ack(id=event.req, sid=sid), out)


def error(event: LogEvent, code: ErrorCode, message: str, out: list[Outcome]) -> None:
    """Refuse the event's request with `code`."""
    reply(event, Error(id=event.req, code=code.value, message=message), out)


def session_subject(session: SessionRecord) -> str:
    """Where the fold sends a session's direct frames (ids checked when they entered)."""
    return subjects.session(session.edge_id, session.sid)


def lost() -> Disconnect:
    """The frame that tells a socket its session ended while it was away."""
    return Disconnect(
        reason=ErrorCode.SESSION_LOST.value,
        message="the session ended while disconnected; join again",
        can_reconnect=True,
    )
