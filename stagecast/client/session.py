"""A room session's lifecycle: join, resume after a dropped socket, leave.

`connecting` -> `connected` on `joined`. When the socket drops without a server
`disconnect`, the session goes `reconnecting` (event `reconnecting`) and retries with a
bounded exponential backoff, within the room's departure grace, sending
`join {resume: <resume token>}` to the same edge, then the next one of the URL list; a
`joined {resumed: true}` makes it `connected` again (event `reconnected`, with the roster
refreshed from the snapshot). `RESUME_FAILED`, any other refusal, or retries running out end
it: `disconnected` (event `disconnected` with the reason). A server `disconnect` ends it at
once, except `SERVER_SHUTDOWN` with `can_reconnect`, which resumes on another edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from schemas.client import Join, JoinAccepted, Leave
from schemas.codec import Message
from schemas.errors import CLOSE_REASONS, ErrorCode
from stagecast.client.connection import (
    CONNECT_ERRORS,
    ConnectOptions,
    SignalConnection,
    socket_urls,
)
from stagecast.client.events import ConnectionState, drain
from stagecast.errors import InvalidStateError, StagecastError, Unavailable

if TYPE_CHECKING:
    from stagecast.client.room import Room

log = logging.getLogger("stagecast.client")

SDK_NAME = "stagecast-python/0.1"
RETRYABLE = frozenset({ErrorCode.UNAVAILABLE.value, ErrorCode.INTERNAL.value, "RATE_LIMITED"})
"""Join refusals worth another attempt (on this or another edge)."""
LEAVE_TIMEOUT = 3.0
CALLBACK_DRAIN_TIMEOUT = 5.0


class Session:
    """The connection lifecycle behind one `Room` (see the module docstring)."""

    def __init__(
        self,
        room: Room,
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
        self._url_index = 0
        self._ready = asyncio.Event()
        self._leaving = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ joining

    async def connect(self) -> None:
        """Join through the first edge that answers; raise the refusal as a `StagecastError`."""
        last: BaseException | None = None
        for index, url in enumerate(self.urls):
            try:
                await self._attempt(url, resume=False)
            except CONNECT_ERRORS as exc:
                last = exc
                continue
            except Unavailable as exc:
                last = exc
                continue
            except BaseException:
                self._set_state(ConnectionState.DISCONNECTED)
                raise
            self._url_index = index
            return
        self._set_state(ConnectionState.DISCONNECTED)
        raise Unavailable(f"no edge answered ({', '.join(self.urls)}): {last!r}")

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
        return await self.connection.request(frame)

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
        shutdown = lost.disconnect is not None or lost.close_code == 4017
        self._set_state(ConnectionState.RECONNECTING)
        self.room.emit("reconnecting")
        loop = asyncio.get_running_loop()
        window = self.options.reconnect_window
        if window is None:
            window = max(0.5, self.room.info.departure_timeout - 1.0)
        deadline = loop.time() + window
        start = self._url_index + (1 if shutdown else 0)
        attempt = 0
        while not self._leaving:
            delay = min(self.options.backoff_max, self.options.backoff_initial * 2**attempt)
            delay *= random.uniform(0.8, 1.2)
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            index = (start + attempt) % len(self.urls)
            attempt += 1
            try:
                await self._attempt(self.urls[index], resume=True)
            except (*CONNECT_ERRORS, Unavailable) as exc:
                log.info("resume attempt %d on %s failed: %r", attempt, self.urls[index], exc)
                continue
            except StagecastError as exc:
                if self._leaving:
                    return
                if exc.code in RETRYABLE:
                    continue
                await self._finish(exc.code)
                return
            self._url_index = index
            self.room.emit("reconnected")
            return
        if not self._leaving:
            await self._finish(ErrorCode.UNAVAILABLE.value)

    def _terminal_reason(self, lost: SignalConnection) -> str | None:
        """Why the lost socket ends the session, or None when it should resume."""
        if lost.disconnect is not None:
            if lost.disconnect.reason == ErrorCode.SERVER_SHUTDOWN.value:
                return None if lost.disconnect.can_reconnect else lost.disconnect.reason
            return lost.disconnect.reason
        code = lost.close_code
        if code is not None and code in CLOSE_REASONS and code != 4017:
            return CLOSE_REASONS[code]
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
