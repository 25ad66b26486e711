"""Every bad input gets its named error, and nothing else is affected.

Each case abuses one socket, then checks that the abuser is still open (unless the protocol
closes it) and that a well-behaved socket in the same room still acts and still receives
the room's events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from schemas.client import (
    Ack,
    Error,
    Join,
    ParticipantJoined,
    ParticipantUpdated,
    Ping,
    Pong,
    PublishData,
    PublishTrack,
    SetAttributes,
    SetMetadata,
)
from schemas.codec import encode
from schemas.log import LeaveRequested
from schemas.models import Grant
from tests.edge_fixtures import ROOM, Client, Stack, edge_stack


@dataclass
class Room:
    stack: Stack
    good: Client
    listener: Client


@pytest.fixture
async def room(tmp_path: Path) -> AsyncIterator[Room]:
    async with edge_stack(tmp_path) as stack:
        good = await stack.join("good")
        listener = await stack.join("listener")
        yield Room(stack, good, listener)


async def assert_unaffected(room: Room, abuser: Client | None = None) -> None:
    """The abuser still answers pings; the good socket still acts and is still heard."""
    if abuser is not None:
        await abuser.sync()
    metadata = f"still fine {room.good.next_id()}"
    assert isinstance(
        await room.good.request(SetMetadata(id=room.good.next_id(), metadata=metadata)), Ack
    )
    update = await room.listener.expect(
        ParticipantUpdated, lambda m: m.participant.metadata == metadata
    )
    assert update.participant.id == "good"
    name = f"newcomer-{room.good.next_id()}"
    await room.stack.join(name)
    await room.good.expect(ParticipantJoined, lambda m: m.participant.id == name)


def pack(body: object) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


Abuse = Callable[[Client], Awaitable[None]]

BEFORE_JOIN: list[tuple[str, Abuse, int | None, str]] = [
    ("malformed msgpack", lambda c: c.send_raw(b"\xc1\xff not msgpack"), None, "BAD_REQUEST"),
    ("a map without a type", lambda c: c.send_raw(pack({"id": 4})), 4, "BAD_REQUEST"),
    ("not a map", lambda c: c.send_raw(pack([1, 2, 3])), None, "BAD_REQUEST"),
    ("a text frame", lambda c: c.send_raw('{"t": "ping", "id": 1}'), None, "BAD_REQUEST"),
    ("an unknown type", lambda c: c.send_raw(pack({"t": "teleport", "id": 5})), 5, "UNKNOWN_TYPE"),
    ("an edge-only frame", lambda c: c.send_raw(pack({"t": "ack", "id": 6})), 6, "UNKNOWN_TYPE"),
    (
        "a room-log event",
        lambda c: c.send(LeaveRequested(room_id=ROOM, at=1, sid="PA_x")),
        None,
        "UNKNOWN_TYPE",
    ),
    (
        "a wrong field type",
        lambda c: c.send_raw(pack({"t": "ping", "id": "seven"})),
        None,
        "BAD_REQUEST",
    ),
    ("a missing field", lambda c: c.send_raw(pack({"t": "join", "id": 8})), 8, "BAD_REQUEST"),
    (
        "a newer version",
        lambda c: c.send_raw(pack({"t": "ping", "v": 99, "id": 9})),
        9,
        "BAD_REQUEST",
    ),
    (
        "a frame over 1 MiB",
        lambda c: c.send_raw(pack({"t": "ping", "id": 10, "pad": b"x" * (1024 * 1024 + 10)})),
        None,
        "PAYLOAD_TOO_LARGE",
    ),
    ("a request before join", lambda c: c.send(SetMetadata(id=11, metadata="x")), 11, "NOT_JOINED"),
    (
        "a NUL in the room id",  # once stopped all PostgreSQL persistence
        lambda c: c.send_raw(pack({"t": "join", "id": 12, "token": "t", "room_id": "x\x00y"})),
        12,
        "BAD_REQUEST",
    ),
    (
        "a control character in the room id",
        lambda c: c.send_raw(pack({"t": "join", "id": 13, "token": "t", "room_id": "a\nb"})),
        13,
        "BAD_REQUEST",
    ),
]


@pytest.mark.parametrize(
    ("abuse", "req", "code"),
    [case[1:] for case in BEFORE_JOIN],
    ids=[case[0] for case in BEFORE_JOIN],
)
async def test_bad_input_before_join(room: Room, abuse: Abuse, req: int | None, code: str) -> None:
    abuser = await room.stack.connect()
    await abuse(abuser)
    error = await abuser.error()
    assert (error.id, error.code) == (req, code), error
    await assert_unaffected(room, abuser)
    # The abuser can still join afterwards.
    reply = await abuser.request(Join(id=99, token=room.stack.token("abuser")))
    assert not isinstance(reply, Error), reply


JOINED: list[tuple[str, Abuse, int | None, str]] = [
    ("a second join", lambda c: c.send(Join(id=20, token="whatever")), 20, "ALREADY_JOINED"),
    (
        "data over 15 KiB",
        lambda c: c.send_raw(
            pack({"t": "publish_data", "id": 21, "payload": b"x" * (15 * 1024 + 1)})
        ),
        21,
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "data over 15 KiB on a topic",
        lambda c: c.send_raw(
            pack({"t": "publish_data", "id": 24, "topic": "chat", "payload": b"x" * 15_361})
        ),
        24,
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "data on the RPC topic over its envelope room",
        lambda c: c.send_raw(
            pack({"t": "publish_data", "id": 25, "topic": "sc.rpc", "payload": b"x" * 18_433})
        ),
        25,
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "metadata over 64 KiB",
        lambda c: c.send_raw(
            pack({"t": "set_metadata", "id": 22, "metadata": "m" * (64 * 1024 + 1)})
        ),
        22,
        "PAYLOAD_TOO_LARGE",
    ),
    (
        "attributes of the wrong type",
        lambda c: c.send_raw(pack({"t": "set_attributes", "id": 23, "attributes": {"a": 1}})),
        23,
        "BAD_REQUEST",
    ),
    (
        "a bad literal",
        lambda c: c.send_raw(pack({"t": "publish_track", "id": 24, "kind": "smell"})),
        24,
        "BAD_REQUEST",
    ),
    (
        "publishing without the grant",
        lambda c: c.send(PublishTrack(id=25, kind="audio")),
        25,
        "INVALID_PERMISSIONS",
    ),
    (
        "data without the grant",
        lambda c: c.send(PublishData(id=26, payload=b"x")),
        26,
        "INVALID_PERMISSIONS",
    ),
]


@pytest.mark.parametrize(
    ("abuse", "req", "code"), [case[1:] for case in JOINED], ids=[case[0] for case in JOINED]
)
async def test_bad_input_after_join(room: Room, abuse: Abuse, req: int | None, code: str) -> None:
    abuser = await room.stack.join("abuser", grant=Grant(can_publish=False, can_publish_data=False))
    await abuse(abuser)
    error = await abuser.error()
    assert (error.id, error.code) == (req, code), error
    await assert_unaffected(room, abuser)
    ok = await abuser.request(SetAttributes(id=abuser.next_id(), attributes={"k": "v"}))
    assert isinstance(ok, Ack), ok


async def test_a_short_flood_is_rate_limited_and_stays_open(room: Room) -> None:
    abuser = await room.stack.join("flooder")
    for i in range(150):
        await abuser.send(Ping(id=1000 + i))
    limited = await abuser.error()
    assert limited.code == "RATE_LIMITED" and limited.id is not None and limited.id >= 1000
    # Answers keep coming for what was admitted; the socket is still open.
    await abuser.expect(Pong)
    await assert_unaffected(room)
    assert room.stack.url  # the edge is still up
    await abuser.close()


async def test_a_sustained_flood_closes_4008(room: Room) -> None:
    abuser = await room.stack.join("flooder")
    try:
        for i in range(1000):
            await abuser.send_raw(encode(Ping(id=i)))
    except ConnectionClosed:
        pass  # the edge closed it mid-flood
    closed = await abuser.closed()
    assert (closed.code, closed.reason) == (4008, "RATE_LIMITED")
    assert any(e.code == "RATE_LIMITED" for e in abuser.of(Error))
    await assert_unaffected(room)
