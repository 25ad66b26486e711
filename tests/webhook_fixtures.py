"""A real HTTP webhook receiver on 127.0.0.1 and public events to feed the sender.

`HttpReceiver` speaks plain HTTP/1.1 over asyncio streams (keep-alive, Content-Length
bodies), asks `answer(path, body)` for each request's status (it may wait as long as it
likes: a hanging endpoint) and records every request. `verified(...)` checks one delivery
with the third-party `standardwebhooks` package and the LiveKit JWT, and returns its body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import jwt
import standardwebhooks

from schemas.events import ParticipantJoinedEvent, TrackPublishedEvent
from schemas.models import ParticipantInfo, TrackInfo

API_KEY = "webhook-test-key"
API_SECRET = "webhook-test-secret-of-32-bytes!"
SECRET = "whsec_" + base64.b64encode(b"s3cr3t-key-for-webhook-tests-32b").decode()

Answer = Callable[[str, bytes], Awaitable[int]]


async def ok(_path: str, _body: bytes) -> int:
    return 200


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def doc(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class HttpReceiver:
    """An HTTP server recording every request it answered (and counting those it got)."""

    def __init__(
        self, answer: Answer = ok, *, close_after: bool = False, reply: bytes = b""
    ) -> None:
        self.answer = answer
        self.close_after = close_after
        """Close each connection after its answer (without saying so in a header)."""
        self.reply = reply
        """The body of every answer."""
        self.requests: list[Request] = []
        self.arrived = 0
        self.connections = 0
        self._scheme = "http"
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> HttpReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self._scheme = "https" if ssl_context is not None else "http"
        return self

    def url(self, path: str = "/hook") -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{self._scheme}://127.0.0.1:{port}{path}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.arrived += 1
                status = await self.answer(path, body)
                self.requests.append(Request(path, headers, body, status))
                answer = f"HTTP/1.1 {status} X\r\ncontent-length: {len(self.reply)}\r\n\r\n"
                writer.write(answer.encode() + self.reply)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    def delivered(self, path: str = "/hook") -> list[Request]:
        """The requests answered 2xx on `path`, in the order answered."""
        return [r for r in self.requests if r.path == path and 200 <= r.status < 300]


def verified(request: Request) -> dict[str, Any]:
    """Check a delivery with `standardwebhooks` and the LiveKit JWT; its parsed body."""
    doc: dict[str, Any] = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == quote(doc["id"], safe="!#$&'()*+,-./:;=?@[]^_`{|}~")
    assert request.headers["content-type"] == "application/webhook+json"
    claims = jwt.decode(
        request.headers["authorization"], API_SECRET, algorithms=["HS256"], issuer=API_KEY
    )
    digest = base64.b64encode(hashlib.sha256(request.body).digest()).decode()
    assert claims["sha256"] == digest
    return doc


def joins(
    room: str, count: int, *, start: int = 0, viewer_every: int = 0
) -> list[tuple[str, str, ParticipantJoinedEvent, str]]:
    """`count` participant_joined events of `room`, ids ``<room>.<n>`` (n from `start`):
    the `(room, name, message, id)` tuples `RoomLog.publish_events` takes."""
    out = []
    for n in range(start, start + count):
        viewer = viewer_every > 0 and n % viewer_every == 0
        info = ParticipantInfo(sid=f"PA_{room}_{n}", id=f"p{n}", is_viewer=viewer)
        event_id = f"{room}.{n}"
        message = ParticipantJoinedEvent(
            id=event_id,
            at=1_800_000_000_000 + n,
            room_id=room,
            room_sid=f"RM_{room}",
            participant=info,
        )
        out.append((room, "participant_joined", message, event_id))
    return out


def track(room: str, n: int) -> tuple[str, str, TrackPublishedEvent, str]:
    info = ParticipantInfo(sid=f"PA_{room}_{n}", id=f"p{n}")
    message = TrackPublishedEvent(
        id=f"{room}.t{n}",
        at=1_800_000_000_000,
        room_id=room,
        room_sid=f"RM_{room}",
        participant=info,
        track=TrackInfo(sid=f"TR_{n}", kind="audio", source="microphone"),
    )
    return (room, "track_published", message, message.id)


def number(event_id: str) -> int:
    """The ``n`` of an id made by `joins`."""
    return int(event_id.rsplit(".", 1)[1])


def assert_room_order(ids: list[str], room: str, count: int) -> None:
    """At-least-once in order: every delivery of `room`'s event n comes after a delivery of
    its event n-1 (duplicates of earlier events may come again later), and all came."""
    highest = -1
    for event_id in ids:
        if not event_id.startswith(f"{room}."):
            continue
        n = number(event_id)
        assert n <= highest + 1, f"{event_id} delivered before {room}.{highest + 1}"
        highest = max(highest, n)
    assert highest == count - 1, f"{room}: only up to {highest} of {count}"
