"""One signaling socket, from accept to close, with an explicit lifecycle (STYLE rule 6).

Event-driven: the socket (`edge.rtcsocket`) hands each whole message to `received` as it
arrives; they are handled in order, one at a time, each in a task that lives only while it
is handled (messages that arrive meanwhile wait in a short line, and the socket stops
reading while any wait). When the session ends or the socket closes, one task winds it
down (`_detach`, then the last frames and the close). An idle socket has no task.

States: ``CONNECTING`` (accepted, no session yet; a join may be in flight; without a join
within `EdgeConfig.join_deadline` the socket gets `JOIN_TIMEOUT` and close 4018), ``JOINED``,
``CLOSING`` (a close is queued or the socket dropped; frames are ignored), ``CLOSED``.
Requests that need a session answer `NOT_JOINED` before the join, a second join answers
`ALREADY_JOINED`. Bad input of any kind gets a named error frame and the socket stays open
unless docs/protocol.md says otherwise; nothing a client sends raises out of the handler.

Frames out go through the socket's `SendQueue` as complete WebSocket frames, written to the
transport at once unless it is paused (the `FrameSink` of `edge.rtcsocket`); broadcasts come
framed by the fan-out, once for all its sockets. Direct replies for the session (acks,
errors, join outcomes, tier changes, disconnects) arrive via `on_direct`; room broadcasts
via the `Member` methods the fan-out calls. Both run synchronously on the event loop, so
every state change happens in one place without locks.

When the socket ends, the session tells the room log what happened, unless the server
ended it: a dropped joined socket appends `SessionDisconnected` (the departure grace starts,
the client may resume); a join that was appended but never answered is withdrawn.

Over 500 lines: the whole lifecycle of a socket (states, frames out, the join and its
replies, the close) is one state machine, kept in one place so every transition is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgspec

from edge.awaited import AwaitedOutcomes
from edge.bus import BusUnavailable, ask_outcome
from edge.closecodes import close_code
from edge.inbox import Inbox, Reading
from edge.join import JoinAttempt, random_token
from edge.latch import Latch
from edge.ports import EdgePort
from edge.ratelimit import FloodGuard, TokenBucket
from edge.resume import ResumeClaims, mint_resume_token
from edge.retried import RetriedActions
from edge.sendqueue import FrameSink, SendQueue
from edge.wsframe import binary_frame
from schemas.api import ActionOutcome
from schemas.client import (
    Ack,
    ActiveSpeakersChanged,
    Disconnect,
    Error,
    JoinAccepted,
    TierChanged,
)
from schemas.clock import now_ms
from schemas.codec import SchemaError, decode_trusted, encode
from schemas.errors import ErrorCode
from schemas.log import LeaveRequested, LogEvent, SessionDisconnected
from schemas.models import Grant
from schemas.subjects import session_reply

log = logging.getLogger("stagecast.edge")

_MESSAGE_CHARS = 1000
_NO_GRANT = Grant()
"""A session's grant until it joins (frozen: one for all)."""


class EdgeSessionState(enum.Enum):
    CONNECTING = "connecting"
    JOINED = "joined"
    CLOSING = "closing"
    CLOSED = "closed"


class SocketLine(FrameSink, Reading, Protocol):
    """The socket a session runs on: its frames out, and a pause on what it reads."""


FrameHandler = Callable[["EdgeSession", bytes | None, str | None], Coroutine[Any, Any, None]]
"""What the session does with each frame the client sends (`edge.requests.handle_frame`)."""


class EdgeSession:
    """One socket's session (see the module docstring). Create it when the socket is open,
    then `open` it; the socket calls `received` and `socket_closed`.

    `node` is the edge it runs on; `line` the socket (`edge.rtcsocket.RtcSocket`);
    `handle` serves each frame the client sends (the edge hands it
    `edge.requests.handle_frame`); `loop`, when given, the loop it runs on (its tasks are
    made there without asking for the running loop)."""

    __slots__ = (
        "_deadline",
        "_ended",
        "_handle",
        "_in_room",
        "_msg_ids",
        "_pending",
        "_pending_counts",
        "_pending_voice",
        "_server_ended",
        "_socket_gone",
        "_winding_down",
        "attempt",
        "awaited",
        "closed",
        "connection_id",
        "detached",
        "epoch",
        "grant",
        "guard",
        "inbox",
        "is_viewer",
        "joined_seq",
        "leave_req",
        "line",
        "node",
        "participant_id",
        "queue",
        "retried",
        "room_id",
        "room_sid",
        "sid",
        "state",
        "subject",
        "token_expires_at",
        "upgrade_token",
        "was_joined",
    )

    def __init__(
        self,
        node: EdgePort,
        line: SocketLine,
        upgrade_token: str | None,
        handle: FrameHandler,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        config = node.config
        self.node = node
        self._handle = handle
        self.line = line
        self.upgrade_token = upgrade_token
        self.state = EdgeSessionState.CONNECTING
        self.connection_id = random_token(6)
        self.queue = SendQueue(config.send_queue_size, line, self._on_overflow)
        self.guard = FloodGuard(
            TokenBucket(config.rate_per_s, config.rate_burst), config.flood_close_after
        )
        # Session facts: set at join (or resume), updated by tier changes.
        self.room_id = ""
        self.sid = ""
        self.participant_id = ""
        self.is_viewer = False
        self.grant = _NO_GRANT
        self.subject = ""
        self.room_sid = ""
        self.epoch = 0
        """The connection epoch the statekeeper gave this socket's session (0 until joined)."""
        self.token_expires_at = 0
        """When the participant token expires (seconds; 0 unknown): resume tokens end there."""
        self.attempt: JoinAttempt | None = None
        """The join (or resume) of this socket, once its `join` frame arrived."""
        self.was_joined = False
        self.leave_req: int | None = None
        self.retried = RetriedActions()
        """Message ids of this socket's actions whose append failed (`edge.retried`)."""
        self.awaited: AwaitedOutcomes | None = None
        """This socket's appended actions whose reply has not come yet (`edge.awaited`),
        made at its first action (most viewers never send one)."""
        self._pending: list[tuple[bytes, str, int]] | None = None
        """Broadcasts that came while the join was in flight (None while none did)."""
        self._pending_counts: tuple[bytes, int] | None = None
        self._pending_voice: bytes | None = None
        self._in_room = False
        self._server_ended = False
        self._socket_gone = False
        self._ended = False
        self.inbox = Inbox(self._serve, line, self._failed, loop)
        self._winding_down: asyncio.Task[None] | None = None
        self._deadline = 0
        """The join deadline's token in `node.deadlines` (0: none)."""
        self.joined_seq = 0
        """The log sequence of the joined snapshot: broadcasts up to it are in it already."""
        self.detached = Latch()
        """Set once the session left the fan-out and told the log (see `_detach`)."""
        self.closed = Latch()
        self._msg_ids = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """The socket is open: the edge knows it, and the join deadline runs."""
        self.node.opened(self)
        self._deadline = self.node.deadlines.add(
            self.node.config.join_deadline, self._join_deadline_passed
        )

    def received(self, data: bytes | None, text: str | None) -> None:
        """A whole message from the client (binary `data` or `text`): handled in order."""
        if self.state in (EdgeSessionState.CONNECTING, EdgeSessionState.JOINED):
            self.inbox.put(data, text)  # closing: whatever still arrives is ignored

    async def _serve(self, data: bytes | None, text: str | None) -> None:
        if self.state in (EdgeSessionState.CONNECTING, EdgeSessionState.JOINED):
            await self._handle(self, data, text)

    def _failed(self, exc: BaseException) -> None:
        log.error("handling a frame failed", exc_info=exc)
        self.end(1011, ErrorCode.INTERNAL.value)

    def socket_closed(self) -> None:
        """The socket is gone or closing (the client closed it, or the connection dropped)."""
        if self._winding_down is None:
            self._socket_gone = not self.queue.finished
        self._wind_down()

    def _wind_down(self) -> None:
        if self._winding_down is None and self.state is not EdgeSessionState.CLOSED:
            self._winding_down = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        """Stop handling frames, leave the room, let the close go out, and be `closed`."""
        try:
            if self.awaited is not None:
                self.awaited.stop()
            handling = self.inbox.stop()
            if handling is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await handling
            if not self._socket_gone:
                self.end(1011, ErrorCode.INTERNAL.value)  # no-op when already ending
            self.state = EdgeSessionState.CLOSING
            await self._detach()
            if not self._socket_gone or self.queue.closing:
                # Let the last frames and the close go out (a stuck socket gets a grace).
                await self._flushed(self.node.config.close_grace)
        finally:
            self._cancel_deadline()
            self.state = EdgeSessionState.CLOSED
            self.node.closed_socket(self)
            self.closed.set()

    async def _flushed(self, grace: float) -> None:
        """Wait until the queue's close went out; past `grace`, drop the socket."""
        if self.queue.finished:
            return
        done = asyncio.get_running_loop().create_future()
        self.queue.on_finished = lambda: _resolve(done)
        try:
            await asyncio.wait_for(done, grace)
        except TimeoutError:
            self.line.drop()

    def _cancel_deadline(self) -> None:
        """Forget the join deadline, if one runs."""
        if self._deadline:
            self.node.deadlines.cancel(self._deadline)
            self._deadline = 0

    def _join_deadline_passed(self) -> None:
        """No join (or resume) arrived in time: `JOIN_TIMEOUT`, close 4018."""
        if self.state is not EdgeSessionState.CONNECTING or self.attempt is not None:
            return  # joined, closing, or a join is in flight (`join_timeout` bounds it)
        self.node.metrics.join_timeouts += 1
        code = ErrorCode.JOIN_TIMEOUT
        message = f"no join within {self.node.config.join_deadline:g} s"
        self.refuse(None, code, message, close_code(code.value))

    def end(self, code: int, reason: str, *, server_ended: bool = False) -> None:
        """Queue the close after what is already queued; the session winds down. Idempotent."""
        if server_ended:
            self._server_ended = True
        if self._ended:
            return
        if self.state is not EdgeSessionState.CLOSED:
            self.state = EdgeSessionState.CLOSING
        self.queue.close_after(code, reason)
        self._finish()

    def _finish(self) -> None:
        self._ended = True
        self._wind_down()

    def shutdown(self) -> None:
        """The edge is stopping: tell the client to resume elsewhere, then close (4017)."""
        code = ErrorCode.SERVER_SHUTDOWN.value
        self.send(encode(Disconnect(reason=code, can_reconnect=True)), Disconnect.TYPE)
        self.end(close_code(code), code, server_ended=True)

    def supersede(self) -> None:
        """A new socket on this edge resumed this session: close this one quietly."""
        code = ErrorCode.RESUME_FAILED.value
        frame = Disconnect(reason=code, message="resumed on another socket")
        self.send(encode(frame), Disconnect.TYPE)
        self.end(close_code(code), code, server_ended=True)

    def _on_overflow(self) -> None:
        self.node.metrics.queue_drops += 1
        self.node.metrics.error(ErrorCode.SLOW_CONSUMER.value)
        if not self._ended:
            self.state = EdgeSessionState.CLOSING
            self._finish()  # the queue already aborted with 4010

    async def _detach(self) -> None:
        """Leave the fan-out and the direct-reply routing; tell the log if it must know."""
        try:
            if self._in_room:
                self._in_room = False
                await self.node.fanout.remove(self.room_id, self)
            event = self._closing_event()
            if event is not None:
                # Still registered meanwhile: a resume of this sid on this edge waits for
                # `detached`, so this event lands in the log before the resume does.
                msg_id = self.next_msg_id(event.TYPE)
                try:
                    await self.node.bus.append(event, msg_id)
                except BusUnavailable:
                    self.node.departure_failed(event, msg_id)  # told when NATS is back
        finally:
            self.node.unregister(self)
            self.detached.set()

    def _closing_event(self) -> LogEvent | None:
        attempt = self.attempt
        if attempt is None or not attempt.appended or self._server_ended:
            return None
        if attempt.withdraws_on_close(self.was_joined):
            return LeaveRequested(room_id=self.room_id, at=now_ms(), sid=self.sid)
        return SessionDisconnected(
            room_id=self.room_id, at=now_ms(), sid=self.sid, edge_id=self.node.edge_id
        )

    # ------------------------------------------------------------------ frames out

    def next_msg_id(self, what: str) -> str:
        """A room-log message id unique to this socket's session and this append."""
        return f"{self.sid}:{self.connection_id}:{next(self._msg_ids)}:{what}"

    def send(self, data: bytes, type_tag: str) -> bool:
        """Send an encoded message to the client (framed here: for this socket alone)."""
        return self.put_frame(binary_frame(data), type_tag)

    def put_frame(self, frame: bytes, type_tag: str) -> bool:
        """Write or queue a complete WebSocket frame (`edge.wsframe`)."""
        if self.queue.put(frame):
            self.node.metrics.frame_out(type_tag)
            return True
        return False

    def error(self, req: int | None, code: ErrorCode | str, message: str = "") -> None:
        """Send an error frame naming request `req` (None when it could not be read)."""
        value = code.value if isinstance(code, ErrorCode) else code
        self.node.metrics.error(value)
        self.send(encode(Error(id=req, code=value, message=message[:_MESSAGE_CHARS])), "error")

    def busy(self, req: int, retry_after_ms: int, message: str) -> None:
        """A join refused for now (`SERVER_BUSY`): the socket stays open for the client's
        next try, and gets a fresh join deadline for it (beyond the hint's longest wait)."""
        self.node.metrics.error(ErrorCode.SERVER_BUSY.value)
        busy = Error(
            id=req, code=ErrorCode.SERVER_BUSY.value, message=message, retry_after_ms=retry_after_ms
        )
        self.send(encode(busy), "error")
        if self._deadline and self.state is EdgeSessionState.CONNECTING:
            deadlines = self.node.deadlines
            deadlines.cancel(self._deadline)  # the client may wait up to twice the hint
            wait = self.node.config.join_deadline + 2 * retry_after_ms / 1000
            self._deadline = deadlines.add(wait, self._join_deadline_passed)

    @property
    def can_join(self) -> bool:
        """Whether a `join` frame now starts this socket's join (else `ALREADY_JOINED`)."""
        return self.state is EdgeSessionState.CONNECTING and self.attempt is None

    def refuse(self, req: int | None, code: ErrorCode, message: str, close: int) -> None:
        """A join that cannot go on: the error, then the close."""
        self.error(req, code, message)
        self.end(close, code.value)

    @property
    def joined(self) -> bool:
        """Whether the statekeeper accepted this socket's join and it is not closing."""
        return self.state is EdgeSessionState.JOINED

    def begin_join(self, req: int) -> JoinAttempt | None:
        """Start the socket's one join (or resume); None when it has one already."""
        if not self.can_join:
            return None
        self.attempt = JoinAttempt(req)
        return self.attempt

    def enter_room(
        self,
        room_id: str,
        sid: str,
        participant_id: str,
        *,
        is_viewer: bool,
        grant: Grant,
        token_expires_at: int,
    ) -> None:
        """Fix the session's identity before its join or resume is appended."""
        self.room_id = room_id
        self.sid = sid
        self.participant_id = participant_id
        self.is_viewer = is_viewer
        self.grant = grant
        self.token_expires_at = token_expires_at
        self.subject = session_reply(self.node.edge_id, sid, self.connection_id)

    async def subscribe_room(self) -> None:
        """Join the room's fan-out (before the join is appended, so nothing is missed)."""
        await self.node.fanout.add(self.room_id, self)
        self._in_room = True

    # ------------------------------------------------------------------ fan-out (Member)

    def deliver(self, frame: bytes, type_tag: str, seq: int | None) -> None:
        if self.state is EdgeSessionState.JOINED:
            if seq is None or seq > self.joined_seq:
                self.put_frame(frame, type_tag)
        elif self.state is EdgeSessionState.CONNECTING and seq is not None:
            pending = self._pending
            if pending is None:
                pending = self._pending = []
            elif len(pending) >= self.queue.capacity:
                self._on_overflow_while_joining()
                return
            pending.append((frame, type_tag, seq))

    def deliver_counts(self, frame: bytes, seq: int) -> bool:
        state = self.state
        if state is EdgeSessionState.JOINED:
            return seq >= self.joined_seq and self.queue.put_counts(frame)
        if state is EdgeSessionState.CONNECTING:
            self._pending_counts = (frame, seq)
        return False

    def deliver_voice(self, frame: bytes, seq: int) -> bool:
        state = self.state
        if state is EdgeSessionState.JOINED:
            return self.queue.put_voice(frame)
        if state is EdgeSessionState.CONNECTING:
            self._pending_voice = frame
        return False

    def room_ended(self, frame: bytes, reason: str) -> None:
        if self.state in (EdgeSessionState.CONNECTING, EdgeSessionState.JOINED):
            self.put_frame(frame, Disconnect.TYPE)
            # A joined session was removed with the room; a join still in flight may have
            # landed in a new room of the same id, so it is withdrawn on close.
            self.end(close_code(reason), reason, server_ended=self.was_joined)

    def _on_overflow_while_joining(self) -> None:
        self._pending = None
        self.queue.abort(close_code(ErrorCode.SLOW_CONSUMER.value), ErrorCode.SLOW_CONSUMER.value)
        self._on_overflow()

    # ------------------------------------------------------------------ direct replies

    def on_direct(self, data: bytes) -> None:
        """A frame the statekeeper sent to this session's subject (only it may publish
        there, so its strings are not checked again: `decode_trusted`)."""
        try:
            message = decode_trusted(data)
        except SchemaError as exc:
            log.warning("session %s: undecodable direct frame: %s", self.sid, exc)
            return
        if self.state is EdgeSessionState.CLOSED:
            return
        if (
            self.awaited is not None
            and isinstance(message, (Ack, Error))
            and message.id is not None
            and not self.awaited.replied(message.id, data)
        ):
            self.node.metrics.reply_copies_dropped += 1
            return  # a copy of a reply the statekeeper gave again (`edge.awaited`)
        if isinstance(message, JoinAccepted):
            self._accepted(message)
        elif isinstance(message, Error):
            self._errored(message, data)
        elif isinstance(message, Ack):
            self.send(data, Ack.TYPE)
            if message.id == self.leave_req:
                self.end(1000, ErrorCode.CLIENT_LEFT.value, server_ended=True)
        elif isinstance(message, TierChanged):
            self._tier_changed(message)
        elif isinstance(message, Disconnect):
            self.send(data, Disconnect.TYPE)
            self.end(close_code(message.reason), message.reason, server_ended=True)
        else:
            self.send(data, message.TYPE)

    async def _ask_outcome(self, seq: int) -> ActionOutcome | None:
        """The statekeeper's copy of its reply to this socket's action at log sequence `seq`
        (None when it answers something else)."""
        return await ask_outcome(self.node.bus, self.room_id, seq, self.subject)

    def awaiting(self) -> AwaitedOutcomes:
        """This socket's `awaited`, made on first use."""
        if self.awaited is None:
            self.awaited = AwaitedOutcomes(self._ask_outcome, self._recovered)
        return self.awaited

    def _recovered(self, frame: bytes) -> None:
        """A reply that did not come, from the statekeeper's copy: handled as if it came."""
        self.node.metrics.replies_recovered += 1
        self.on_direct(frame)

    def _accepted(self, message: JoinAccepted) -> None:
        attempt = self.attempt
        if self.state is not EdgeSessionState.CONNECTING or attempt is None:
            return
        if not attempt.answers(message.id):
            return
        self.state = EdgeSessionState.JOINED
        self.was_joined = True
        self._cancel_deadline()  # met: not left to fire as a no-op 10 s on (once per viewer)
        self.node.socket_joined(self)
        self.joined_seq = message.seq
        self.participant_id = message.participant.id
        self.is_viewer = message.participant.is_viewer
        self.grant = message.grant
        self.room_sid = message.room.sid
        self.epoch = message.epoch
        joined = msgspec.structs.replace(message, resume_token=self._resume_token())
        self.node.metrics.joins += 1
        self.send(encode(joined), JoinAccepted.TYPE)
        pending, self._pending = self._pending or (), None
        for frame, type_tag, seq in pending:
            if seq > message.seq:
                self.put_frame(frame, type_tag)
        counts, self._pending_counts = self._pending_counts, None
        if counts is not None and counts[1] >= message.seq and self.queue.put_counts(counts[0]):
            self.node.metrics.frame_out("counts")
        voice, self._pending_voice = self._pending_voice, None
        if voice is not None and self.queue.put_voice(voice):
            self.node.metrics.frame_out(ActiveSpeakersChanged.TYPE)
        attempt.done.set()

    def _errored(self, message: Error, data: bytes) -> None:
        self.node.metrics.error(message.code)
        if message.code == ErrorCode.UNAVAILABLE.value and message.id is not None:
            self.retried.refused(message.id)  # its stored copy was not applied
        self.send(data, Error.TYPE)
        attempt = self.attempt
        if self.state is EdgeSessionState.CONNECTING and attempt and attempt.answers(message.id):
            # Refused: no session exists in the room, so nothing is withdrawn on close.
            self.end(close_code(message.code), message.code, server_ended=True)
            attempt.done.set()
        elif self.leave_req is not None and message.id == self.leave_req:
            self.end(1000, ErrorCode.CLIENT_LEFT.value, server_ended=True)

    def _tier_changed(self, message: TierChanged) -> None:
        self.is_viewer = message.participant.is_viewer
        self.grant = message.grant
        changed = msgspec.structs.replace(message, resume_token=self._resume_token())
        self.send(encode(changed), TierChanged.TYPE)

    def _resume_token(self) -> str:
        config = self.node.config
        claims = ResumeClaims(
            room_id=self.room_id,
            sid=self.sid,
            participant_id=self.participant_id,
            tier="viewer" if self.is_viewer else "speaker",
            grant=self.grant,
            epoch=self.epoch,
            expires_at=self.token_expires_at,
            room_sid=self.room_sid,
        )
        return mint_resume_token(claims, config.api_key, config.api_secret)

    def __repr__(self) -> str:
        return f"<EdgeSession {self.sid or '-'} {self.state.value} room={self.room_id!r}>"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["EdgeSession", "EdgeSessionState", "FrameHandler", "SocketLine"]
