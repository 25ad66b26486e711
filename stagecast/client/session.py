"""A room session's lifecycle: join, resume after a dropped socket, join again, leave.

`connecting` -> `connected` on `joined`. A connect retries refusals worth retrying
(`UNAVAILABLE`, `SERVER_BUSY`, an edge that does not answer, ...) over the URL list with a
bounded backoff for `join_retry_window` seconds, sending the same `join_key` each time, so
a join that timed out but did land is continued, never doubled (nobody sees it join, leave
and join). A refusal with a retry-after hint (`SERVER_BUSY`) waits at least the hint, times
a random factor in [1, 2) so that clients refused together do not come back together.

When the socket drops without a server `disconnect`, the session goes `reconnecting`
(event `reconnecting`) and retries with a bounded exponential backoff, within the room's
departure grace, sending `join {resume: <resume token>}` to the same edge, then the next
one of the URL list; a `joined {resumed: true}` makes it `connected` again (event
`reconnected`, with the roster refreshed from the snapshot).

When the session itself is gone on the server (`RESUME_FAILED`, a `disconnect` with
`SESSION_LOST`, or `NOT_JOINED` answered to a request), the SDK does what LiveKit calls a
full reconnect: it joins again with its token (same identity, a new sid), republishes its
tracks and restores its subscriptions, then emits `reconnected`. Other refusals, or
retries running out, end it: `disconnected` (event `disconnected` with the reason). A
server `disconnect` ends it at once, except `SERVER_SHUTDOWN` with `can_reconnect`, which
resumes on another edge, and `SESSION_LOST`, which joins again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from schemas.client import Join, JoinAccepted, Leave, Subscribe, Unsubscribe
from schemas.codec import Message
from schemas.errors import CLOSE_REASONS, ErrorCode
from schemas.models import RoomInfo, TrackKind
from stagecast.client.connection import (
    CONNECT_ERRORS,
    ConnectOptions,
    SignalConnection,
    socket_urls,
)
from stagecast.client.events import ConnectionState, drain
from stagecast.errors import InvalidStateError, NotJoined, StagecastError, Unavailable

if TYPE_CHECKING:
    from stagecast.client.local import LocalParticipant
    from stagecast.client.media import MediaTransport
    from stagecast.client.participant import RemoteParticipant

log = logging.getLogger("stagecast.client")

SDK_NAME = "stagecast-python/0.1"
RETRYABLE = frozenset(
    {
        ErrorCode.UNAVAILABLE.value,
        ErrorCode.INTERNAL.value,
        ErrorCode.RATE_LIMITED.value,
        ErrorCode.TOO_MANY_CONNECTIONS.value,
        ErrorCode.SERVER_BUSY.value,
    }
)
"""Join refusals worth another attempt (on this or another edge)."""
REJOIN_ON = frozenset({ErrorCode.RESUME_FAILED.value, ErrorCode.SESSION_LOST.value})
"""Why a reconnect joins again instead of resuming: the server's session is gone."""
LEAVE_TIMEOUT = 3.0
CALLBACK_DRAIN_TIMEOUT = 5.0


def honor_hint(delay: float, error: BaseException | None, jitter: float) -> float:
    """The pause before the next attempt: `delay`, or the server's retry-after hint times
    `jitter` (drawn from [1, 2)) when that is longer."""
    hint = error.retry_after if isinstance(error, StagecastError) else 0.0
    return max(delay, hint * jitter) if hint > 0 else delay


class RoomPort(Protocol):
    """What a `ClientSession` needs of the room it connects (`Room` is the real one)."""

    @property
    def info(self) -> RoomInfo: ...

    @property
    def media(self) -> MediaTransport | None: ...

    @property
    def local_participant(self) -> LocalParticipant: ...

    @property
    def remote_participants(self) -> Mapping[str, RemoteParticipant]: ...

    @property
    def callback_tasks(self) -> set[asyncio.Task[Any]]:
        """The room's running event callbacks: a leave waits for them."""

    def apply_joined(self, joined: JoinAccepted) -> None:
        """Take a `joined` snapshot (the first, or a resumed or rejoined session's)."""

    def handle_frame(self, frame: Message) -> None:
        """Apply one pushed frame, in arrival order."""

    def emit(self, event: str, *args: Any) -> None:
        """Emit a room event (`reconnecting`, `reconnected`, `disconnected`)."""


class ClientSession:
    """The connection lifecycle behind one `Room` (see the module docstring)."""

    def __init__(
        self,
        room: RoomPort,
        url: str | Sequence[str],
        token: str,
        *,
        room_id: str | None,
        name: str | None,
        auto_subscribe: bool,
        options: ConnectOptions,
    ) -> None:
        self.room = room
        self.urls = socket_urls(url)
        self.token = token
        self.room_id = room_id
        self.name = name
        self.auto_subscribe = auto_subscribe
        self.options = options
        self.state = ConnectionState.CONNECTING
        self.resume_token = ""
        self.reason = ""
        """Why the session ended (a code such as `REMOVED`), once `disconnected`."""
        self.connection: SignalConnection | None = None
        self.join_key = _new_join_key()
        """Sent with every attempt of one join, so a retried join continues the same sid."""
        self.subscriptions: set[tuple[str, TrackKind]] = set()
        """(participant id, kind) this client subscribed to: restored by a full reconnect."""
        self.resubscribe_later: set[tuple[str, TrackKind]] = set()
        """Subscriptions a full reconnect could not restore yet: no such track (yet)."""
        self.rejoins = 0
        """Full reconnects done (the server's session was gone)."""
        self._rejoin_next = False
        self._url_index = 0
        self._ready = asyncio.Event()
        self._leaving = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ joining

    async def connect(self) -> None:
        """Join through the first edge that answers; raise the refusal as a `StagecastError`.

        Retryable refusals are retried over the URL list with backoff for
        `join_retry_window` seconds (every edge is tried at least once).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.join_retry_window
        last: BaseException | None = None
        attempt = 0
        while True:
            index = attempt % len(self.urls)
            try:
                await self._attempt(self.urls[index], resume=False)
            except (*CONNECT_ERRORS, Unavailable) as exc:
                last = exc
            except StagecastError as exc:
                if exc.code not in RETRYABLE:
                    self._set_state(ConnectionState.DISCONNECTED)
                    raise
                last = exc
            except BaseException:
                self._set_state(ConnectionState.DISCONNECTED)
                raise
            else:
                self._url_index = index
                return
            attempt += 1
            delay = self._backoff(attempt - len(self.urls)) if attempt >= len(self.urls) else 0
            delay = honor_hint(delay, last, random.uniform(1.0, 2.0))
            if attempt >= len(self.urls) and loop.time() + delay >= deadline:
                break
            log.info("join attempt %d on %s failed: %r", attempt, self.urls[index], last)
            await asyncio.sleep(delay)
        self._set_state(ConnectionState.DISCONNECTED)
        if isinstance(last, StagecastError) and not isinstance(last, Unavailable):
            raise last
        raise Unavailable(f"no edge answered ({', '.join(self.urls)}): {last!r}")

    def _backoff(self, attempt: int) -> float:
        delay: float = min(
            self.options.backoff_max, self.options.backoff_initial * 2 ** max(0, attempt)
        )
        return delay * random.uniform(0.8, 1.2)

    async def _attempt(self, url: str, *, resume: bool) -> JoinAccepted:
        """Open a socket to `url` and join (or resume) on it; install it on success."""
        connection = await SignalConnection.open(url, self.options, self._on_closed)
        frame = Join(
            id=0,
            token=self.token,
            room_id=self.room_id,
            name=self.name,
            resume=self.resume_token if resume else None,
            auto_subscribe=self.auto_subscribe,
            sdk=SDK_NAME,
            join_key="" if resume else self.join_key,
        )
        try:
            reply = await connection.request(frame, timeout=self.options.connect_timeout)
            if not isinstance(reply, JoinAccepted):
                raise Unavailable(f"unexpected reply to join: {reply.TYPE}")
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        if self._leaving:
            await connection.close()
            raise InvalidStateError("left while joining")
        self.connection = connection
        self.resume_token = reply.resume_token or self.resume_token
        if self.room_id is None:
            self.room_id = reply.room.id  # a resume must name the room the join chose
        self.room.apply_joined(reply)
        connection.set_handler(self.room.handle_frame)
        connection.start_pinging()
        self._set_state(ConnectionState.CONNECTED)
        return reply

    def _set_state(self, state: ConnectionState) -> None:
        self.state = state
        if state in (ConnectionState.CONNECTED, ConnectionState.DISCONNECTED):
            self._ready.set()
        else:
            self._ready.clear()

    # ------------------------------------------------------------------ requests

    async def request(self, frame: Message) -> Message:
        """Send a request on the live socket, waiting (bounded) through a reconnect."""
        if self.state is ConnectionState.CONNECTING and self.connection is None:
            raise InvalidStateError("the room has not been joined yet")
        if self.state is not ConnectionState.CONNECTED:
            try:
                async with asyncio.timeout(self.options.request_timeout):
                    await self._ready.wait()
            except TimeoutError:
                raise Unavailable("still reconnecting to the room") from None
        if self.state is ConnectionState.DISCONNECTED or self.connection is None:
            raise InvalidStateError(f"the room is disconnected ({self.reason or 'left'})")
        connection = self.connection
        try:
            reply = await connection.request(frame)
        except NotJoined:
            if self._leaving or connection is not self.connection:
                raise
            # The server no longer knows this session (it was dropped while this socket
            # stayed open): join again, then send the request once more on the new session.
            log.warning("the server lost this session: joining again")
            self._rejoin_next = True
            connection.abort()
            try:
                async with asyncio.timeout(self.options.join_retry_window + 1.0):
                    while not self._replaced(connection):
                        await asyncio.sleep(0.05)
            except TimeoutError:
                raise Unavailable("joining the room again took too long") from None
            current = self.connection
            if current is None or current is connection or current.closed:
                raise
            reply = await current.request(frame)
        self._note_subscription(frame)
        return reply

    def _replaced(self, connection: SignalConnection) -> bool:
        """Whether a reconnect that began on `connection` has ended (either way)."""
        if self.state is ConnectionState.DISCONNECTED:
            return True
        return self.connection is not connection and self.state is ConnectionState.CONNECTED

    def _note_subscription(self, frame: Message) -> None:
        if isinstance(frame, Subscribe):
            self.subscriptions.add((frame.participant_id, frame.kind))
        elif isinstance(frame, Unsubscribe):
            self.subscriptions.discard((frame.participant_id, frame.kind))

    # ------------------------------------------------------------------ losing the socket

    def _on_closed(self, connection: SignalConnection) -> None:
        if connection is not self.connection or self._leaving:
            return
        if self.state is ConnectionState.DISCONNECTED:
            return
        task = asyncio.get_running_loop().create_task(self._recover(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, lost: SignalConnection) -> None:
        await lost.close()
        reason = self._terminal_reason(lost)
        if reason is not None:
            await self._finish(reason)
            return
        rejoin = self._rejoin_next or (
            lost.disconnect is not None and lost.disconnect.reason in REJOIN_ON
        )
        self._rejoin_next = False
        shutdown = lost.disconnect is not None or lost.close_code == 4017
        self._set_state(ConnectionState.RECONNECTING)
        self.room.emit("reconnecting")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._window(rejoin)
        start = self._url_index + (1 if shutdown else 0)
        attempt = 0
        if rejoin:
            await self._prepare_rejoin()
        last: BaseException | None = None
        while not self._leaving:
            delay = 0.0 if rejoin and attempt == 0 else self._backoff(attempt)
            delay = honor_hint(delay, last, random.uniform(1.0, 2.0))
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            index = (start + attempt) % len(self.urls)
            attempt += 1
            try:
                await self._attempt(self.urls[index], resume=not rejoin)
                if rejoin:
                    await self._restore()
            except (*CONNECT_ERRORS, Unavailable) as exc:
                log.info("reconnect attempt %d on %s failed: %r", attempt, self.urls[index], exc)
                last = exc
                continue
            except StagecastError as exc:
                if self._leaving:
                    return
                if exc.code in RETRYABLE:
                    last = exc
                    continue
                if exc.code in REJOIN_ON and not rejoin:
                    log.info("the session is gone (%s): joining again", exc.code)
                    rejoin, attempt = True, 0
                    deadline = loop.time() + self._window(rejoin)
                    await self._prepare_rejoin()
                    continue
                await self._finish(exc.code)
                return
            self._url_index = index
            self.room.emit("reconnected")
            return
        if not self._leaving:
            await self._finish(ErrorCode.UNAVAILABLE.value)

    def _window(self, rejoin: bool) -> float:
        """Seconds to keep trying: a resume only makes sense within the departure grace."""
        if rejoin:
            return self.options.join_retry_window
        window = self.options.reconnect_window
        if window is None:
            window = max(0.5, self.room.info.departure_timeout - 1.0)
        return window

    async def _prepare_rejoin(self) -> None:
        """The server's session is gone: its media connections with it; a new join key."""
        self.join_key = _new_join_key()
        self.rejoins += 1
        media = self.room.media
        if media is not None:
            await media.reset()

    async def _restore(self) -> None:
        """After a full reconnect: republish the tracks and restore the subscriptions.

        A subscription whose publisher has no such track right now (it is joining again
        too, say) is restored when the track is published (`resubscribe_later`)."""
        try:
            await self.room.local_participant._republish()
        except (Unavailable, NotJoined):
            raise  # the new session is not usable: the reconnect goes on
        except StagecastError as exc:  # one track refused: the session itself is fine
            log.warning("republishing after a full reconnect: %s", exc)
        self.resubscribe_later.clear()
        for participant_id, kind in sorted(self.subscriptions):
            participant = self.room.remote_participants.get(participant_id)
            if participant is None or not any(
                p.kind == kind for p in participant.track_publications.values()
            ):
                self.resubscribe_later.add((participant_id, kind))
                continue
            await self._resubscribe(participant_id, kind)

    def tracks_available(self, participant: RemoteParticipant) -> None:
        """A speaker's tracks changed: restore the subscriptions a full reconnect kept."""
        if not self.resubscribe_later:
            return
        kinds = {p.kind for p in participant.track_publications.values()}
        for key in [(participant.id, kind) for kind in sorted(kinds)]:
            if key in self.resubscribe_later:
                self.resubscribe_later.discard(key)
                task = asyncio.get_running_loop().create_task(self._resubscribe(*key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _resubscribe(self, participant_id: str, kind: TrackKind) -> None:
        """Restore one subscription; a publisher that is rejoining too (its track not
        published again yet) is subscribed when the track is back."""
        try:
            await self.request(Subscribe(id=0, participant_id=participant_id, kind=kind))
        except StagecastError as exc:
            if exc.code in (ErrorCode.NOT_PUBLISHED.value, ErrorCode.PARTICIPANT_NOT_FOUND.value):
                self.resubscribe_later.add((participant_id, kind))
            else:
                log.info("restoring the subscription to %s %s: %s", participant_id, kind, exc)

    def _terminal_reason(self, lost: SignalConnection) -> str | None:
        """Why the lost socket ends the session, or None when it should resume."""
        if lost.disconnect is not None:
            if lost.disconnect.reason == ErrorCode.SERVER_SHUTDOWN.value:
                return None if lost.disconnect.can_reconnect else lost.disconnect.reason
            if lost.disconnect.reason == ErrorCode.SESSION_LOST.value:
                return None
            return lost.disconnect.reason
        code = lost.close_code
        if code is not None and code in CLOSE_REASONS and code != 4017:
            reason = CLOSE_REASONS[code]
            return None if reason == ErrorCode.SESSION_LOST.value else reason
        return None

    async def _finish(self, reason: str) -> None:
        """End the session: `disconnected` with `reason` (once)."""
        if self.state is ConnectionState.DISCONNECTED:
            return
        self.reason = reason
        self._set_state(ConnectionState.DISCONNECTED)
        connection = self.connection
        if connection is not None:
            await connection.close()
        media = self.room.media
        if media is not None:
            with contextlib.suppress(Exception):
                await media.close()
        self.room.emit("disconnected", reason)

    # ------------------------------------------------------------------ leaving

    async def leave(self) -> None:
        """Leave the room (no departure grace), then settle every task. Idempotent."""
        if self.state is not ConnectionState.DISCONNECTED and not self._leaving:
            self._leaving = True
            connection = self.connection
            if connection is not None and not connection.closed:
                with contextlib.suppress(StagecastError):
                    await connection.request(Leave(id=0), timeout=self._leave_timeout)
            await self._settle_tasks()
            await self._finish(ErrorCode.CLIENT_LEFT.value)
        await self._settle_tasks()
        await drain(self.room.callback_tasks, CALLBACK_DRAIN_TIMEOUT)

    @property
    def _leave_timeout(self) -> float:
        return min(LEAVE_TIMEOUT, self.options.request_timeout)

    async def _settle_tasks(self) -> None:
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current and not t.done()]
        for task in pending:
            if self._leaving:
                task.cancel()
        if pending:
            await asyncio.wait(pending)
        self._tasks = {t for t in self._tasks if not t.done()}


def _new_join_key() -> str:
    return secrets.token_urlsafe(12)
