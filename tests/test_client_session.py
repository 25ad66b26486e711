"""The client session's lifecycle against a scripted fake edge on loopback.

The fake edge speaks just enough of docs/protocol.md to accept a join, then misbehaves in
one precise way per test: it stops answering pings, drops the socket, refuses a resume, or
ends the session. What the SDK must do each time is in `stagecast.client.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import stagecast
from schemas.client import (
    Ack,
    Disconnect,
    Error,
    Join,
    JoinAccepted,
    Ping,
    Pong,
    SetMetadata,
)
from schemas.codec import Message, decode, encode
from schemas.models import Grant, ParticipantInfo, RoomInfo
from stagecast import errors
from stagecast.client import ConnectionState, ConnectOptions, Room
from tests.polling import eventually

pytestmark = pytest.mark.timeout(30)

FAST = ConnectOptions(
    connect_timeout=2.0,
    request_timeout=1.0,
    ping_interval=0.1,
    ping_timeout=0.3,
    reconnect_window=3.0,
    backoff_initial=0.05,
    backoff_max=0.2,
)

Script = Callable[[ServerConnection, Join, int], Awaitable[None]]
"""What the fake edge does on its n-th connection (0-based) once the join frame is read."""


def accepted(join: Join) -> JoinAccepted:
    return JoinAccepted(
        id=join.id,
        seq=5,
        room=RoomInfo(id="r1", sid="RM_1", departure_timeout=20),
        participant=ParticipantInfo(sid="PA_1", id="alice"),
        grant=Grant(),
        resume_token="resume-token",
        resumed=join.resume is not None,
    )


async def serve_requests(ws: ServerConnection, *, pong: bool = True, ack: bool = True) -> None:
    """Answer pings (unless `pong` is False) and ack every other request, until closed."""
    with contextlib.suppress(ConnectionClosed):
        async for data in ws:
            frame = decode(data if isinstance(data, bytes) else data.encode())
            if isinstance(frame, Ping):
                if pong:
                    await ws.send(encode(Pong(id=frame.id, at=frame.at)))
            elif ack:
                request_id: int = getattr(frame, "id", 0)
                await ws.send(encode(Ack(id=request_id)))


class FakeEdge:
    """A WebSocket server that runs `script` for each connection after its join."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.joins: list[Join] = []
        self.url = ""

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            first: Message = decode(await ws.recv())  # type: ignore[arg-type]
        except ConnectionClosed:
            return
        assert isinstance(first, Join)
        self.joins.append(first)
        await self.script(ws, first, len(self.joins) - 1)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeEdge]:
        async with serve(self._handle, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}"
            yield self


@contextlib.asynccontextmanager
async def joined(
    script: Script, options: ConnectOptions = FAST
) -> AsyncIterator[tuple[Room, FakeEdge]]:
    async with FakeEdge(script).running() as edge:
        room = await stagecast.join(edge.url, "token", options=options)
        try:
            yield room, edge
        finally:
            await room.leave()


def record(room: Room) -> list[tuple[str, tuple[object, ...]]]:
    log: list[tuple[str, tuple[object, ...]]] = []
    for event in ("reconnecting", "reconnected", "disconnected"):
        room.on(event, lambda *args, _e=event: log.append((_e, args)))
    return log


async def test_a_silent_edge_is_detected_by_ping_and_the_session_resumes() -> None:
    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        await ws.send(encode(accepted(join)))
        await serve_requests(ws, pong=n > 0)  # the first connection never answers a ping

    async with joined(script) as (room, edge):
        log = record(room)
        await eventually(lambda: ("reconnected", ()) in log, what="resumed", timeout=5)
        assert log[0] == ("reconnecting", ())
        assert edge.joins[1].resume == "resume-token"
        assert edge.joins[1].room_id == "r1"
        assert room.connection_state is ConnectionState.CONNECTED
        await room.local_participant.set_metadata("still here")  # the new socket works


async def test_resume_failed_ends_the_session() -> None:
    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        if n == 0:
            await ws.send(encode(accepted(join)))
            assert ws.transport is not None
            ws.transport.abort()  # a network failure: no close frame
            return
        await ws.send(encode(Error(id=join.id, code="RESUME_FAILED", message="gone")))
        await ws.close(4016, "RESUME_FAILED")

    async with joined(script) as (room, _edge):
        log = record(room)
        await eventually(lambda: ("disconnected", ("RESUME_FAILED",)) in log, what="ended")
        assert [e for e, _ in log] == ["reconnecting", "disconnected"]
        assert room.connection_state is ConnectionState.DISCONNECTED
        with pytest.raises(errors.InvalidStateError):
            await room.local_participant.set_metadata("x")


async def test_retries_run_out_within_the_window() -> None:
    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        if n == 0:
            await ws.send(encode(accepted(join)))
            assert ws.transport is not None
            ws.transport.abort()
            return
        await ws.close(1011, "try later")  # every resume attempt fails at the transport

    options = ConnectOptions(
        ping_interval=60, reconnect_window=0.6, backoff_initial=0.05, backoff_max=0.1
    )
    async with joined(script, options) as (room, edge):
        log = record(room)
        await eventually(lambda: ("disconnected", ("UNAVAILABLE",)) in log, what="gave up")
        assert len(edge.joins) >= 3, "it retried"


async def test_a_server_disconnect_is_final() -> None:
    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        await ws.send(encode(accepted(join)))
        await ws.send(encode(Disconnect(reason="REMOVED")))
        await ws.close(4012, "REMOVED")

    async with joined(script) as (room, edge):
        log = record(room)
        await eventually(lambda: log, what="an event")
        assert log == [("disconnected", ("REMOVED",))]
        await asyncio.sleep(0.2)
        assert len(edge.joins) == 1, "no reconnect after a server disconnect"


async def test_an_unanswered_request_times_out_as_unavailable() -> None:
    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        await ws.send(encode(accepted(join)))
        await serve_requests(ws, ack=False)

    async with joined(script) as (room, _edge):
        with pytest.raises(errors.Unavailable):
            await room.local_participant.set_metadata("never acked")
        assert room.connection_state is ConnectionState.CONNECTED


async def test_join_refusals_arrive_as_their_error_class() -> None:
    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        await ws.send(encode(Error(id=join.id, code="ROOM_FULL", message="full (2)")))
        await ws.close(4015, "ROOM_FULL")

    async with FakeEdge(script).running() as edge:
        with pytest.raises(errors.RoomFull, match="full"):
            await stagecast.join(edge.url, "token", options=FAST)
        assert len(edge.joins) == 1


async def test_an_error_reply_names_its_request() -> None:
    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        await ws.send(encode(accepted(join)))
        async for data in ws:
            frame = decode(data)  # type: ignore[arg-type]
            if isinstance(frame, SetMetadata):
                too_big = Error(id=frame.id, code="PAYLOAD_TOO_LARGE", message="64 KiB")
                await ws.send(encode(too_big))

    async with joined(script) as (room, _edge):
        with pytest.raises(errors.PayloadTooLarge):
            await room.local_participant.set_metadata("x")


def answering_metadata(answers: list[list[Message]], seen: list[SetMetadata]) -> Script:
    """A script: the n-th `set_metadata` gets the frames `answers[n]` (with its id), those
    after the list an `ack`; every other request is acked, pings ponged."""

    async def script(ws: ServerConnection, join: Join, n: int) -> None:
        await ws.send(encode(accepted(join)))
        with contextlib.suppress(ConnectionClosed):
            async for data in ws:
                frame = decode(data if isinstance(data, bytes) else data.encode())
                if isinstance(frame, Ping):
                    await ws.send(encode(Pong(id=frame.id, at=frame.at)))
                    continue
                if not isinstance(frame, SetMetadata):
                    await ws.send(encode(Ack(id=getattr(frame, "id", 0))))
                    continue
                seen.append(frame)
                for answer in answers[len(seen) - 1] if len(seen) <= len(answers) else [Ack(id=0)]:
                    await ws.send(encode(msgspec.structs.replace(answer, id=frame.id)))

    return script


REFUSED = Error(code="UNAVAILABLE", message="room log append failed: NoStreamResponseError")


async def test_a_request_refused_unavailable_is_sent_again_with_the_same_id() -> None:
    seen: list[SetMetadata] = []
    async with joined(answering_metadata([[REFUSED], [REFUSED]], seen)) as (room, _edge):
        await room.local_participant.set_metadata("m1")  # no error reaches the caller
        assert [f.metadata for f in seen] == ["m1"] * 3
        assert len({f.id for f in seen}) == 1
        await room.local_participant.set_metadata("m2")  # a new request: a new id
        assert seen[-1].id != seen[0].id


async def test_the_refused_attempts_outcome_arriving_in_the_pause_is_taken() -> None:
    """The refused attempt was stored after all: its `ack` comes while the SDK waits to
    send again, and ends the call without another send."""
    seen: list[SetMetadata] = []
    options = dataclasses.replace(FAST, backoff_initial=0.5, backoff_max=0.5)
    script = answering_metadata([[REFUSED, Ack(id=0)]], seen)
    async with joined(script, options) as (room, _edge):
        await room.local_participant.set_metadata("m1")
        await room.local_participant.set_metadata("m2")
        assert [f.metadata for f in seen] == ["m1", "m2"]


async def test_a_request_still_refused_after_the_retry_window_raises() -> None:
    seen: list[SetMetadata] = []
    options = dataclasses.replace(FAST, retry_window=0.5)
    async with joined(answering_metadata([[REFUSED]] * 100, seen), options) as (room, _edge):
        with pytest.raises(errors.Unavailable, match="NoStreamResponseError"):
            await room.local_participant.set_metadata("m1")
        assert 2 <= len(seen) < 100 and len({f.id for f in seen}) == 1
    seen.clear()
    never = dataclasses.replace(FAST, retry_window=0.0)
    async with joined(answering_metadata([[REFUSED]], seen), never) as (room, _edge):
        with pytest.raises(errors.Unavailable):
            await room.local_participant.set_metadata("m1")
        assert len(seen) == 1
