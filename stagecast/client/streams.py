"""Text and byte streams between participants (LiveKit's names and shapes).

A stream rides on reliable data (`schemas.streams`): a header, numbered chunks of at most
`CHUNK_BYTES`, a trailer. It keeps the data path's ordering, destinations and byte budgets:
a writer whose chunk the edge refuses with `RATE_LIMITED` waits and sends it again (up to
`budget_wait` seconds, then raises `RateLimited`), so a long stream is paced by the
sender's budget rather than failing.

Memory is bounded on both sides. A writer holds one chunk at a time. A reader buffers at
most `READER_BUFFER_BYTES` not yet read (beyond: `StreamBufferFull`), and a room tracks at
most `MAX_OPEN_STREAMS` incoming streams at once (more are ignored and counted in
`StreamInbox.dropped`). A reader never hangs: the sender leaving, aborting, a lost chunk (the
room's data budget dropped it) or this client leaving the room makes it raise
`StreamCutOff` once the chunks before the cut are read.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import dataclasses
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Generic, Self, TypeVar

from schemas.client import PublishData
from schemas.codec import Message, encode
from schemas.streams import (
    CHUNK_BYTES,
    STREAM_TOPIC,
    StreamChunk,
    StreamHeader,
    StreamKind,
    StreamTrailer,
)
from stagecast.errors import (
    InvalidStateError,
    RateLimited,
    StreamBufferFull,
    StreamCutOff,
    StreamError,
)

log = logging.getLogger("stagecast.client")

READER_BUFFER_BYTES = 4 * 1024 * 1024
"""The most unread content one incoming stream may hold before `StreamBufferFull`."""
MAX_OPEN_STREAMS = 64
"""The most incoming streams a room tracks at once."""
BUDGET_WAIT = 30.0
"""How long a sender keeps retrying a chunk the edge refused as over its data budget."""

Request = Callable[[Message], Awaitable[Message]]
T = TypeVar("T", str, bytes)


async def send_reliable(
    request: Request,
    topic: str,
    message: Message,
    destination_ids: Sequence[str] = (),
    budget_wait: float = BUDGET_WAIT,
) -> None:
    """Send `message` as a reliable data payload on `topic`; when the edge refuses it as
    over the sender's data budget, wait and send it again for up to `budget_wait` s."""
    frame = PublishData(
        id=0, payload=encode(message), topic=topic, destination_ids=tuple(destination_ids)
    )
    deadline = time.monotonic() + budget_wait
    pause = 0.05
    while True:
        try:
            await request(frame)
            return
        except RateLimited:
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a stream is: its id, topic, sender, MIME type, size when known, attributes.

    `name` is a byte stream's file name (empty for text); `timestamp` is the sender's clock
    at the start, in ms since the epoch.
    """

    id: str
    topic: str
    kind: StreamKind
    sender_id: str
    mime_type: str
    total_size: int | None
    attributes: dict[str, str]
    name: str = ""
    timestamp: int = 0


TextStreamInfo = StreamInfo
ByteStreamInfo = StreamInfo


# --------------------------------------------------------------------------- reading


class _StreamReader(Generic[T]):
    """The receiving end of one stream: chunks in order, a bounded buffer."""

    def __init__(self, info: StreamInfo, limit: int = READER_BUFFER_BYTES) -> None:
        self.info = info
        self._limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._next_index = 0
        self._done = False
        self._error: StreamError | None = None
        self._wake = asyncio.Event()

    # the room feeds it ---------------------------------------------------------------

    def _push(self, chunk: StreamChunk) -> bool:
        """Take the next chunk; False once the stream has failed."""
        if self._done or self._error is not None:
            return False
        if chunk.index != self._next_index:
            self._fail(
                StreamCutOff(
                    self.info.id,
                    f"chunk {chunk.index} arrived where {self._next_index} was due: "
                    "chunks were lost (the room's data budget drops data beyond it)",
                )
            )
            return False
        if self._buffered + len(chunk.content) > self._limit:
            self._chunks.clear()
            self._buffered = 0
            self._fail(
                StreamBufferFull(
                    self.info.id, f"more than {self._limit} unread bytes: the reader fell behind"
                )
            )
            return False
        self._next_index += 1
        self._chunks.append(chunk.content)
        self._buffered += len(chunk.content)
        self._wake.set()
        return True

    def _finish(self, trailer: StreamTrailer) -> None:
        if self._done or self._error is not None:
            return
        if trailer.reason:
            self._fail(StreamCutOff(self.info.id, f"the sender aborted: {trailer.reason}"))
        elif trailer.chunks != self._next_index:
            self._fail(
                StreamCutOff(
                    self.info.id,
                    f"{self._next_index} of {trailer.chunks} chunks arrived: chunks were lost",
                )
            )
        else:
            self._done = True
            self._wake.set()

    def _fail(self, error: StreamError) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        self._wake.set()

    # the application reads it --------------------------------------------------------

    async def _next_bytes(self) -> bytes | None:
        while True:
            if self._chunks:
                content = self._chunks.popleft()
                self._buffered -= len(content)
                return content
            if self._error is not None:
                raise self._error
            if self._done:
                return None
            self._wake.clear()
            await self._wake.wait()


class TextStreamReader(_StreamReader[str]):
    """An incoming text stream: `async for text in reader`, or `await reader.read_all()`."""

    async def __aiter__(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        while (content := await self._next_bytes()) is not None:
            try:
                text = decoder.decode(content)
            except UnicodeDecodeError as exc:
                raise StreamError(self.info.id, f"not UTF-8 text: {exc}") from None
            if text:
                yield text

    async def read_all(self) -> str:
        """The whole text, once the stream is complete (it raises if the stream fails)."""
        return "".join([text async for text in self])


class ByteStreamReader(_StreamReader[bytes]):
    """An incoming byte stream: `async for chunk in reader`, or `await reader.read_all()`."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (content := await self._next_bytes()) is not None:
            yield content

    async def read_all(self) -> bytes:
        """The whole content, once the stream is complete (it raises if the stream fails)."""
        return b"".join([chunk async for chunk in self])


TextStreamHandler = Callable[[TextStreamReader, str], Awaitable[None] | None]
ByteStreamHandler = Callable[[ByteStreamReader, str], Awaitable[None] | None]


class StreamInbox:
    """A room's incoming streams: handlers by topic, and the streams open now."""

    def __init__(self, tasks: set[asyncio.Task[Any]]) -> None:
        self._tasks = tasks
        self._handlers: dict[tuple[StreamKind, str], Callable[..., Any]] = {}
        self._open: dict[tuple[str, str], _StreamReader[Any]] = {}
        self.dropped = 0
        """Streams ignored because `MAX_OPEN_STREAMS` were open already."""

    def register(self, kind: StreamKind, topic: str, handler: Callable[..., Any]) -> None:
        if (kind, topic) in self._handlers:
            raise ValueError(f"a {kind} stream handler for topic {topic!r} is registered already")
        self._handlers[(kind, topic)] = handler

    def unregister(self, kind: StreamKind, topic: str) -> None:
        self._handlers.pop((kind, topic), None)

    def on_message(self, sender_id: str, message: Message) -> None:
        """Apply one stream message from `sender_id` (as the edge stamped it)."""
        if isinstance(message, StreamHeader):
            self._open_stream(sender_id, message)
        elif isinstance(message, StreamChunk):
            reader = self._open.get((sender_id, message.stream_id))
            if reader is not None and not reader._push(message):
                del self._open[(sender_id, message.stream_id)]
        elif isinstance(message, StreamTrailer):
            reader = self._open.pop((sender_id, message.stream_id), None)
            if reader is not None:
                reader._finish(message)

    def sender_left(self, sender_id: str) -> None:
        """Fail every open stream of `sender_id` (it left the room)."""
        for key in [k for k in self._open if k[0] == sender_id]:
            reader = self._open.pop(key)
            reader._fail(StreamCutOff(reader.info.id, f"the sender {sender_id!r} left"))

    def close(self, why: str) -> None:
        """Fail every open stream (this client left the room)."""
        readers, self._open = list(self._open.values()), {}
        for reader in readers:
            reader._fail(StreamCutOff(reader.info.id, why))

    def _open_stream(self, sender_id: str, header: StreamHeader) -> None:
        handler = self._handlers.get((header.kind, header.topic))
        if handler is None:
            log.debug("no %s stream handler for topic %r: ignored", header.kind, header.topic)
            return
        if len(self._open) >= MAX_OPEN_STREAMS:
            self.dropped += 1
            log.warning("%d incoming streams open: %r ignored", len(self._open), header.stream_id)
            return
        info = StreamInfo(
            id=header.stream_id,
            topic=header.topic,
            kind=header.kind,
            sender_id=sender_id,
            mime_type=header.mime_type,
            total_size=header.total_size,
            attributes=dict(header.attributes),
            name=header.name,
            timestamp=header.timestamp,
        )
        reader: _StreamReader[Any] = (
            TextStreamReader(info) if header.kind == "text" else ByteStreamReader(info)
        )
        self._open[(sender_id, header.stream_id)] = reader
        try:
            result = handler(reader, sender_id)
        except Exception:
            log.exception("stream handler for topic %r failed", header.topic)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stream handler failed", exc_info=task.exception())


# --------------------------------------------------------------------------- writing


def _text_pieces(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """`data` (UTF-8) in pieces of at most `size` bytes, each holding whole characters."""
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and end > start and (data[end] & 0xC0) == 0x80:
            end -= 1  # never split a character: back off to its first byte
        yield data[start:end]
        start = end


def _byte_pieces(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class _StreamWriter:
    """The sending end of one stream (`write`, then `aclose`; or `async with`)."""

    def __init__(
        self,
        info: StreamInfo,
        request: Request,
        destination_ids: Sequence[str],
        budget_wait: float,
    ) -> None:
        self.info = info
        self._request = request
        self._destinations = tuple(destination_ids)
        self._budget_wait = budget_wait
        self._index = 0
        self._closed = False
        self._lock = asyncio.Lock()

    async def _send(self, message: Message) -> None:
        await send_reliable(
            self._request, STREAM_TOPIC, message, self._destinations, self._budget_wait
        )

    async def _open(self) -> None:
        info = self.info
        await self._send(
            StreamHeader(
                stream_id=info.id,
                topic=info.topic,
                kind=info.kind,
                mime_type=info.mime_type,
                name=info.name,
                total_size=info.total_size,
                attributes=info.attributes,
                timestamp=info.timestamp,
            )
        )

    async def _write_pieces(self, pieces: Iterator[bytes]) -> None:
        async with self._lock:
            if self._closed:
                raise InvalidStateError(f"stream {self.info.id!r} is closed")
            for piece in pieces:
                await self._send(
                    StreamChunk(stream_id=self.info.id, index=self._index, content=piece)
                )
                self._index += 1

    async def aclose(self, reason: str = "") -> None:
        """End the stream (idempotent); a `reason` tells the readers it was aborted."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            trailer = StreamTrailer(stream_id=self.info.id, chunks=self._index, reason=reason[:256])
            await self._send(trailer)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self.aclose("" if exc is None else f"{type(exc).__name__}: {exc}")


class TextStreamWriter(_StreamWriter):
    """Write text as it is produced (`await writer.write("...")`), then `aclose()`."""

    async def write(self, text: str) -> None:
        await self._write_pieces(_text_pieces(text.encode()))


class ByteStreamWriter(_StreamWriter):
    """Write bytes as they come (`await writer.write(b"...")`), then `aclose()`."""

    async def write(self, data: bytes) -> None:
        await self._write_pieces(_byte_pieces(bytes(data)))


def new_info(
    kind: StreamKind,
    topic: str,
    sender_id: str,
    *,
    mime_type: str,
    total_size: int | None = None,
    attributes: dict[str, str] | None = None,
    name: str = "",
    stream_id: str | None = None,
) -> StreamInfo:
    """The info of a stream this client opens (a fresh id unless one is given)."""
    return StreamInfo(
        id=stream_id or uuid.uuid4().hex,
        topic=topic,
        kind=kind,
        sender_id=sender_id,
        mime_type=mime_type,
        total_size=total_size,
        attributes=dict(attributes or {}),
        name=name,
        timestamp=int(time.time() * 1000),
    )


async def open_writer(
    kind: StreamKind,
    info: StreamInfo,
    request: Request,
    destination_ids: Sequence[str],
    budget_wait: float = BUDGET_WAIT,
) -> TextStreamWriter | ByteStreamWriter:
    """Send the header and return the writer."""
    cls = TextStreamWriter if kind == "text" else ByteStreamWriter
    writer = cls(info, request, destination_ids, budget_wait)
    await writer._open()
    return writer
