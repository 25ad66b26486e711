"""Text and byte streams end to end: a real nats-server, statekeeper and edge, SDK clients."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas import streams as wire
from schemas.codec import Message, decode, encode
from schemas.models import CARRIED_DATA_BYTES, DATA_BYTES
from schemas.streams import CHUNK_BYTES, StreamChunk, StreamHeader, StreamTrailer
from stagecast.client import ByteStreamReader, TextStreamReader
from stagecast.client.streams import (
    StreamInbox,
    TextStreamWriter,
    _byte_pieces,
    _text_pieces,
)
from stagecast.errors import StreamBufferFull, StreamCutOff
from tests.stack_fixtures import Stack, sdk_stack

pytestmark = pytest.mark.timeout(60)

ROOM = "streams"
WAIT = 20.0

PACED: dict[str, Any] = {
    # A sender budget a 1 MiB stream overruns (the writer must pace itself), and a room
    # budget it stays within (the room's budget drops data; a dropped chunk cuts a stream).
    "data_bytes_per_s": 512 * 1024,
    "data_burst_bytes": 256 * 1024,
    "room_data_bytes_per_s": 8 * 1024 * 1024,
    "room_data_burst_bytes": 8 * 1024 * 1024,
}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, **PACED) as running:
        yield running


async def data_refusals(stack: Stack) -> int:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("stagecast_edge_data_sender_refusals_total "):
            return int(float(line.split()[1]))
    return 0


# --------------------------------------------------------------------------- pure parts


def test_text_pieces_never_split_a_character_and_fit_a_chunk() -> None:
    text = "é€😀a" * 20_000
    data = text.encode()
    pieces = list(_text_pieces(data))
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= CHUNK_BYTES for p in pieces)
    assert all(p.decode() for p in pieces)  # each decodes on its own: whole characters


def test_byte_pieces_cover_the_data() -> None:
    data = random.Random(1).randbytes(3 * CHUNK_BYTES + 5)
    pieces = list(_byte_pieces(data))
    assert [len(p) for p in pieces] == [CHUNK_BYTES] * 3 + [5]
    assert b"".join(pieces) == data


def test_stream_messages_fit_in_one_data_payload() -> None:
    chunk = StreamChunk(stream_id="x" * 256, index=2**40, content=b"\xff" * CHUNK_BYTES)
    assert len(encode(chunk)) <= 15 * 1024
    assert decode(encode(chunk)) == chunk


def test_rpc_messages_with_full_payloads_fit_in_a_reserved_topics_data_payload() -> None:
    """The worst case: 15 KiB payloads beside ids of 256 four-byte characters each, and the
    same in an error's data beside a 256-character message, within `CARRIED_DATA_BYTES`."""
    wide = "😀" * 256
    full = "😀" * (wire.RPC_PAYLOAD_BYTES // 4)
    failure = wire.RpcFailure(code=65535, message=wide, data=full)
    messages: list[Message] = [
        wire.RpcRequest(request_id=wide, method=wide, payload=full, response_timeout_ms=2**53),
        wire.RpcResponse(request_id=wide, payload=full),
        wire.RpcResponse(request_id=wide, error=failure),
    ]
    for message in messages:
        size = len(encode(message))
        assert DATA_BYTES < size <= wire.data_limit(wire.RPC_TOPIC) == CARRIED_DATA_BYTES
        assert decode(encode(message)) == message
    assert wire.data_limit("chat") == wire.data_limit(None) == DATA_BYTES
    assert wire.data_limit(wire.STREAM_TOPIC) == CARRIED_DATA_BYTES


async def test_a_reader_that_falls_behind_its_buffer_fails_with_a_named_error() -> None:
    tasks: set[asyncio.Task[object]] = set()
    inbox = StreamInbox(tasks)
    readers: list[ByteStreamReader] = []
    inbox.register("bytes", "t", lambda reader, sender: readers.append(reader))
    inbox.on_message("alice", StreamHeader(stream_id="s", topic="t", kind="bytes"))
    content = b"x" * CHUNK_BYTES
    for index in range(4 * 1024 * 1024 // CHUNK_BYTES + 1):
        inbox.on_message("alice", StreamChunk(stream_id="s", index=index, content=content))
    with pytest.raises(StreamBufferFull):
        await readers[0].read_all()


async def test_a_gap_in_the_chunks_cuts_the_stream_off() -> None:
    inbox = StreamInbox(set())
    readers: list[TextStreamReader] = []
    inbox.register("text", "t", lambda reader, sender: readers.append(reader))
    inbox.on_message("alice", StreamHeader(stream_id="s", topic="t", kind="text"))
    inbox.on_message("alice", StreamChunk(stream_id="s", index=0, content=b"one "))
    inbox.on_message("alice", StreamChunk(stream_id="s", index=2, content=b"three"))
    inbox.on_message("alice", StreamTrailer(stream_id="s", chunks=3))
    got: list[str] = []
    with pytest.raises(StreamCutOff, match="lost"):
        async for text in readers[0]:
            got.append(text)
    assert got == ["one "]  # what arrived before the gap is still read


async def test_a_chunk_from_another_sender_does_not_join_the_stream() -> None:
    inbox = StreamInbox(set())
    readers: list[TextStreamReader] = []
    inbox.register("text", "t", lambda reader, sender: readers.append(reader))
    inbox.on_message("alice", StreamHeader(stream_id="s", topic="t", kind="text"))
    inbox.on_message("mallory", StreamChunk(stream_id="s", index=0, content=b"spoof"))
    inbox.on_message("alice", StreamChunk(stream_id="s", index=0, content=b"real"))
    inbox.on_message("alice", StreamTrailer(stream_id="s", chunks=1))
    assert await readers[0].read_all() == "real"


# --------------------------------------------------------------------------- end to end


async def test_a_one_mib_text_stream_arrives_intact_and_in_order(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    received: asyncio.Future[tuple[str, str, object]] = asyncio.get_running_loop().create_future()

    async def on_text(reader: TextStreamReader, sender_id: str) -> None:
        text = await reader.read_all()
        received.set_result((text, sender_id, reader.info))

    bob.register_text_stream_handler("transcript", on_text)
    # numbered lines, multi-byte characters: order and boundaries both show in the result
    lines = [f"{n:06d} ünïcødé ✓ line\n" for n in range(40_000)]
    text = "".join(lines)
    assert len(text.encode()) > 1024 * 1024
    refused_before = await data_refusals(stack)
    sent = await alice.local_participant.send_text(
        text, topic="transcript", attributes={"lang": "fr"}
    )

    got, sender, info = await asyncio.wait_for(received, WAIT)
    assert got == text
    assert sender == "alice"
    assert info == sent
    assert sent.total_size == len(text.encode()) and sent.attributes == {"lang": "fr"}
    # the sender's budget refused chunks on the way, and the writer sent them again
    assert await data_refusals(stack) > refused_before


async def test_incremental_text_and_a_file_to_one_destination(stack: Stack, tmp_path: Path) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    carol = await stack.join(stack.token("carol", ROOM))
    chunks: list[str] = []
    done = asyncio.Event()
    files: asyncio.Queue[tuple[bytes, object]] = asyncio.Queue()
    carol_got: list[str] = []

    async def on_text(reader: TextStreamReader, sender_id: str) -> None:
        async for text in reader:
            chunks.append(text)
        done.set()

    async def on_file(reader: ByteStreamReader, sender_id: str) -> None:
        await files.put((await reader.read_all(), reader.info))

    bob.register_text_stream_handler("reply", on_text)
    bob.register_byte_stream_handler("files", on_file)
    carol.register_byte_stream_handler("files", lambda r, s: carol_got.append(s))

    writer = await alice.local_participant.stream_text(topic="reply")
    assert isinstance(writer, TextStreamWriter)
    for word in ("Hello", ", ", "world"):
        await writer.write(word)
    await writer.aclose()
    await asyncio.wait_for(done.wait(), WAIT)
    assert chunks == ["Hello", ", ", "world"]  # each write arrives as it was written

    path = tmp_path / "photo.bin"
    content = random.Random(7).randbytes(100_000)
    path.write_bytes(content)
    await alice.local_participant.send_file(
        path, topic="files", mime_type="image/png", destination_ids=["bob"]
    )
    data, info = await asyncio.wait_for(files.get(), WAIT)
    assert data == content
    assert (info.name, info.mime_type, info.total_size, info.sender_id) == (  # type: ignore[attr-defined]
        "photo.bin",
        "image/png",
        100_000,
        "alice",
    )
    # carol was not a destination: a later broadcast reaches her, the file never did
    await alice.local_participant.send_file(b"hi", topic="files")
    await asyncio.wait_for(files.get(), WAIT)
    for _ in range(100):
        if carol_got:
            break
        await asyncio.sleep(0.05)
    assert carol_got == ["alice"]


async def test_a_stream_whose_sender_leaves_raises_in_the_reader(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    got: list[str] = []
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    first = asyncio.Event()

    async def on_text(reader: TextStreamReader, sender_id: str) -> None:
        try:
            async for text in reader:
                got.append(text)
                first.set()
        except StreamCutOff as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    bob.register_text_stream_handler("live", on_text)
    writer = await alice.local_participant.stream_text(topic="live")
    await writer.write("the start of a sentence")
    await asyncio.wait_for(first.wait(), WAIT)
    await alice.leave()  # no trailer will ever come

    error = await asyncio.wait_for(outcome, WAIT)
    assert isinstance(error, StreamCutOff), error
    assert "left" in error.message
    assert got == ["the start of a sentence"]


async def test_an_aborted_stream_raises_with_the_senders_reason(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def on_bytes(reader: ByteStreamReader, sender_id: str) -> None:
        try:
            await reader.read_all()
        except StreamCutOff as exc:
            outcome.set_result(exc)

    bob.register_byte_stream_handler("upload", on_bytes)
    with pytest.raises(RuntimeError):
        async with await alice.local_participant.stream_bytes("f", topic="upload") as writer:
            await writer.write(b"partial")
            raise RuntimeError("disk gone")
    error = await asyncio.wait_for(outcome, WAIT)
    assert "disk gone" in str(error)
