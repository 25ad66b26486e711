"""One signaling WebSocket to one edge: frames out, replies correlated, pushes handed on.

`SignalConnection` knows nothing of rooms. It numbers requests, resolves each reply (an
`Ack`, a typed reply or an `Error`, which becomes the matching `stagecast.errors` class)
by its id, pings the edge and aborts a socket that stops answering, and hands every other
frame to the room in arrival order. Until the room installs its handler (after it has
applied the `joined` snapshot), pushes are held, so none is applied before the snapshot.

A request refused `UNAVAILABLE` (the room log electing a leader, say) is sent again with
the same id for `retry_window` seconds, so the edge appends it under the same message id
and it is applied at most once (`edge.retried`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, overload
from urllib.parse import urlsplit, urlunsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from schemas.client import (
    Ack,
    Disconnect,
    Error,
    Join,
    JoinAccepted,
    ParticipantsPage,
    Ping,
    Pong,
    SignalAnswer,
)
from schemas.clock import now_ms
from schemas.codec import MAX_FRAME_BYTES, Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from stagecast.errors import StagecastError, Unavailable, error_for

log = logging.getLogger("stagecast.client")

PushHandler = Callable[[Message], None]
REPLY_TYPES = (Ack, Error, JoinAccepted, ParticipantsPage, Pong, SignalAnswer)
"""Frames that answer a request (matched by `id`)."""

CONNECT_ERRORS = (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed)
"""What opening a socket to an edge that is down or unreachable raises."""
RETRY_AFTER_MS_HEADER = "stagecast-retry-after-ms"
"""The header of a refused upgrade's wait in ms (docs/protocol.md, "Busy edge")."""


def refused_upgrade(exc: InvalidStatus) -> StagecastError | None:
    """The `ServerBusy` of an upgrade the edge answered 503 ``SERVER_BUSY`` (its hint from
    `RETRY_AFTER_MS_HEADER`, else ``Retry-After`` in seconds), or None for any other."""
    response = exc.response
    body = bytes(response.body or b"").decode(errors="replace")
    code = ErrorCode.SERVER_BUSY.value
    if response.status_code != 503 or not body.startswith(code):
        return None
    headers = response.headers
    try:
        hint_ms = int(headers.get(RETRY_AFTER_MS_HEADER) or 0)
        hint_ms = hint_ms or int(headers.get("retry-after") or 0) * 1000
    except ValueError:
        hint_ms = 0
    return error_for(code, body.removeprefix(code).lstrip(": ").strip(), max(0, hint_ms))


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Timeouts and pacing of the signaling connection (the defaults suit production)."""

    connect_timeout: float = 10.0
    """Seconds to open the socket and get the `joined` reply."""
    request_timeout: float = 10.0
    """Seconds a request waits for its reply before `Unavailable`."""
    ping_interval: float = 15.0
    """Seconds between application pings."""
    ping_timeout: float = 10.0
    """Seconds without a pong before the socket is treated as dead."""
    reconnect_window: float | None = None
    """Seconds to keep trying to resume; None: the room's departure grace (minus a margin)."""
    backoff_initial: float = 0.25
    backoff_max: float = 2.0
    join_retry_window: float = 20.0
    """Seconds a join (the first, or a full reconnect) keeps retrying refusals worth
    retrying (`UNAVAILABLE`, an edge that does not answer); every URL is tried once even
    when this is 0."""
    retry_window: float = 15.0
    """Seconds a request refused `UNAVAILABLE` (a room-log leader election takes 4-9 s) is
    sent again, with the same id, before the error is raised; 0: never. Kept well under
    the room log's 2-minute duplicate window, which makes the retries safe."""


def _unavailable(reply: Message) -> bool:
    """Whether `reply` refuses its request as `UNAVAILABLE` (worth sending again)."""
    return isinstance(reply, Error) and reply.code == ErrorCode.UNAVAILABLE.value


def socket_url(url: str) -> str:
    """The `/rtc` WebSocket URL of an edge given as a ws(s):// or http(s):// base URL.

    `http` becomes `ws`, `https` becomes `wss`; a path not already ending in `/rtc` gets it
    appended; query and fragment are dropped. `ValueError` for anything else.
    """
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an edge URL (ws://, wss://, http:// or https://): {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/rtc"):
        path += "/rtc"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def socket_urls(url: str | Sequence[str]) -> list[str]:
    """`socket_url` of one URL or of each in a list (order kept, duplicates dropped)."""
    given = [url] if isinstance(url, str) else list(url)
    if not given:
        raise ValueError("no edge URL given")
    return list(dict.fromkeys(socket_url(u) for u in given))


def http_url(url: str) -> str:
    """The HTTP base of an edge given as any of the URL forms `socket_url` accepts."""
    parts = urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(
        parts.scheme.lower()
    )
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an edge URL (http://, https://, ws:// or wss://): {url!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/rtc")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class Replies:
    """The replies to one request id in arrival order: a request sent again after
    `UNAVAILABLE` may get two (the refusal, then the outcome of the refused attempt, which
    was stored after all), both read by the reader before the request looks again.

    A waiting `next` is woken through one future, as a plain awaited reply would be (no
    task in between: the order of a reply and a socket closing right after it is kept).
    """

    def __init__(self) -> None:
        self._items: collections.deque[Message | Unavailable] = collections.deque()
        self._wake: asyncio.Future[None] | None = None

    def put(self, item: Message | Unavailable) -> None:
        """A reply, or the `Unavailable` of a lost socket."""
        self._items.append(item)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    @overload
    async def next(self, timeout: float, what: str) -> Message: ...
    @overload
    async def next(self, timeout: float, what: None) -> Message | None: ...

    async def next(self, timeout: float, what: str | None) -> Message | None:
        """The next reply within `timeout` s; then `Unavailable` naming `what`, or None
        when `what` is None. A lost socket raises its `Unavailable`."""
        if not self._items:
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._wake
            except TimeoutError:
                if what is None:
                    return None
                raise Unavailable(f"no reply to {what} in time") from None
            finally:
                self._wake = None
        item = self._items.popleft()
        if isinstance(item, Unavailable):
            raise item
        return item


class SignalConnection:
    """One open signaling socket (see the module docstring). Make it with `open`."""

    def __init__(
        self,
        ws: ClientConnection,
        url: str,
        options: ConnectOptions,
        on_closed: Callable[[SignalConnection], None],
    ) -> None:
        self.ws = ws
        self.url = url
        self.options = options
        self.disconnect: Disconnect | None = None
        """The edge's `disconnect` frame, if it sent one."""
        self.close_code: int | None = None
        self.close_reason = ""
        self._on_closed = on_closed
        self._ids = itertools.count(1)
        self._pending: dict[int, Replies] = {}
        self._handler: PushHandler | None = None
        self._held: list[Message] = []
        self._closed = asyncio.Event()
        self._cancelled = False
        self._reader = asyncio.create_task(self._read(), name=f"stagecast-read {url}")
        self._pinger: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, url: str, options: ConnectOptions, on_closed: Callable[[SignalConnection], None]
    ) -> SignalConnection:
        """Open the socket (raises one of `CONNECT_ERRORS` when the edge is unreachable,
        `ServerBusy` with the edge's retry-after hint when it refused the upgrade as busy)."""
        try:
            ws = await connect(
                url,
                open_timeout=options.connect_timeout,
                max_size=MAX_FRAME_BYTES + 1024,
                ping_interval=None,
                close_timeout=2.0,
                compression=None,
            )
        except InvalidStatus as exc:
            busy = refused_upgrade(exc)
            if busy is None:
                raise
            raise busy from None
        return cls(ws, url, options, on_closed)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start_pinging(self) -> None:
        """Ping every `ping_interval`; abort the socket when a pong is late."""
        if self._pinger is None and not self.closed:
            self._pinger = asyncio.create_task(self._ping(), name=f"stagecast-ping {self.url}")

    def set_handler(self, handler: PushHandler) -> None:
        """Install the push handler; frames held so far go to it first, in order."""
        self._handler = handler
        held, self._held = self._held, []
        for frame in held:
            handler(frame)

    async def send(self, frame: Message) -> None:
        """Send one frame (no reply expected). `Unavailable` if the socket is closed."""
        try:
            data = encode(frame)
        except SchemaError as exc:
            raise error_for(exc.code.value, str(exc)) from None
        try:
            await self.ws.send(data)
        except ConnectionClosed:
            raise Unavailable("the connection to the edge is closed") from None

    async def request(self, frame: Message, timeout: float | None = None) -> Message:
        """Send a request (its `id` is replaced by a fresh one) and return its reply.

        An `UNAVAILABLE` reply is retried with the same id for `retry_window` seconds
        (not a join, which has its own retries, nor a ping). An `Error` reply is raised as
        its `stagecast.errors` class; no reply within `timeout` (default
        `request_timeout`) or a lost socket raise `Unavailable`.
        """
        if self.closed:
            raise Unavailable("the connection to the edge is closed")
        request_id = next(self._ids)
        frame = msgspec.structs.replace(frame, id=request_id)
        loop = asyncio.get_running_loop()
        retried = not isinstance(frame, (Join, Ping))
        retry_until = loop.time() + (self.options.retry_window if retried else 0.0)
        wait = timeout or self.options.request_timeout
        replies = self._pending[request_id] = Replies()
        try:
            await self.send(frame)
            reply = await replies.next(wait, frame.TYPE)
            for n in itertools.count():
                if not _unavailable(reply) or loop.time() >= retry_until:
                    break
                # The refused attempt may have been stored all the same: its outcome may
                # come during the pause, and is then the answer.
                pause = min(self.options.backoff_max, self.options.backoff_initial * 2**n)
                early = await replies.next(min(pause, retry_until - loop.time()), None)
                if early is not None:
                    reply = early
                    continue
                log.info("%s refused UNAVAILABLE: sending it again", frame.TYPE)
                await self.send(frame)
                reply = await replies.next(wait, frame.TYPE)
        finally:
            self._pending.pop(request_id, None)
        if isinstance(reply, Error):
            raise error_for(reply.code, reply.message, reply.retry_after_ms)
        return reply

    def abort(self) -> None:
        """Drop the socket at once (no closing handshake), as a network failure would."""
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        """Close the socket and wait for the reader to finish. Idempotent."""
        if self._pinger is not None:
            self._pinger.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the reader has seen the socket close."""
        await asyncio.wait({self._reader})
        if self._pinger is not None:
            self._pinger.cancel()
            await asyncio.wait({self._pinger})

    # ------------------------------------------------------------------ internals

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                if isinstance(data, str):
                    continue  # the protocol is binary; ignore stray text
                try:
                    frame = decode(data)
                except SchemaError as exc:
                    log.warning("undecodable frame from %s: %s", self.url, exc)
                    continue
                self._dispatch(frame)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            # Cancelled from outside (asyncio.run ending after an error, say): the loop is
            # going away, so nothing may start a reconnect that would outlive it.
            self._cancelled = True
            raise
        except Exception:
            log.exception("signaling reader failed on %s", self.url)
            self.abort()
        finally:
            self._finish()

    def _dispatch(self, frame: Message) -> None:
        if isinstance(frame, REPLY_TYPES):
            request_id: Any = frame.id
            replies = self._pending.get(request_id) if request_id is not None else None
            if replies is not None:
                replies.put(frame)
                return
            if isinstance(frame, Error):
                log.warning("edge error %s: %s", frame.code, frame.message)
                return
        if isinstance(frame, Disconnect):
            self.disconnect = frame
        if self._handler is None:
            self._held.append(frame)
        else:
            try:
                self._handler(frame)
            except Exception:
                log.exception("handling %s failed", frame.TYPE)

    def _finish(self) -> None:
        self.close_code = self.ws.close_code
        self.close_reason = self.ws.close_reason or ""
        self._closed.set()
        for replies in self._pending.values():
            replies.put(Unavailable("the connection to the edge was lost"))
        self._pending.clear()
        if self._pinger is not None:
            self._pinger.cancel()
        if self._cancelled:
            return
        try:
            self._on_closed(self)
        except Exception:
            log.exception("close handler failed")

    async def _ping(self) -> None:
        interval, timeout = self.options.ping_interval, self.options.ping_timeout
        while not self.closed:
            await asyncio.sleep(interval)
            try:
                await self.request(Ping(id=0, at=now_ms()), timeout=timeout)
            except Unavailable:
                if not self.closed:
                    log.warning("no pong from %s in %.0f s: dropping the socket", self.url, timeout)
                    self.abort()
                return
            except Exception:
                continue  # an edge that refuses ping (RATE_LIMITED, ...) is still alive
