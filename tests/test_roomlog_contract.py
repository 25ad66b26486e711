"""The room-log contract, run against `MemoryRoomLog` and `RoomLog` on a real JetStream.

What `roomlog.seam.RoomLogPort` promises and the shells rely on: sequences, message-id
dedupe, the events stream beside the log, partitions, and readers that follow the log.
JetStream-only behaviour (stream configuration, consumer recovery, server restarts) is in
`tests/test_roomlog.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import nats.js.errors
import pytest

from roomlog.log import DUPLICATE_WINDOW, RoomLog
from roomlog.memory import MemoryRoomLog
from roomlog.seam import RoomLogPort
from schemas import subjects
from schemas.codec import encode
from schemas.events import RoomStarted
from schemas.log import LeaveRequested
from schemas.models import RoomInfo
from tests.reading import nothing_more, read

MakeLog = Callable[..., RoomLogPort]
"""`make(partitions=1)`: a room log whose streams are not ensured yet."""


def leave(room_id: str, n: int) -> LeaveRequested:
    return LeaveRequested(room_id=room_id, at=1_700_000_000_000 + n, sid=f"s{n}")


def started(n: int, room_id: str = "r") -> RoomStarted:
    return RoomStarted(id=f"ev{n}", at=n, room=RoomInfo(id=room_id, sid="RM_1"))


@pytest.fixture(params=["memory", "jetstream"])
def make_log(request: pytest.FixtureRequest) -> MakeLog:
    """Makes room logs of the parameter's kind (JetStream: on a fresh nats-server)."""
    if request.param == "memory":
        return lambda partitions=1: MemoryRoomLog(partitions)
    js = request.getfixturevalue("js")
    return lambda partitions=1: RoomLog(js, partitions, ack_timeout=1.0)


@pytest.fixture
async def room_log(make_log: MakeLog) -> RoomLogPort:
    log = make_log()
    await log.ensure()
    return log


class TestRoomLogContract:
    """Every `RoomLogPort` must pass these (parametrized over the twin and JetStream)."""

    async def test_appends_get_increasing_sequences(self, room_log: RoomLogPort) -> None:
        assert await room_log.last_seq() == 0
        seqs = [await room_log.append(leave(f"room-{i % 3}", i), f"m{i}") for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert await room_log.last_seq() == 5

    async def test_a_repeated_message_id_is_stored_once(self, room_log: RoomLogPort) -> None:
        first = await room_log.append(leave("r", 1), "same-id")
        await room_log.append(leave("r", 2), "other-id")
        again = await room_log.append(leave("r", 3), "same-id")  # the id decides, not the event
        assert again == first == 1
        assert await room_log.last_seq() == 2
        async with room_log.reader(None, 1) as reader:
            assert [r.event for r in await read(reader, 2)] == [leave("r", 1), leave("r", 2)]
            await nothing_more(reader)

    async def test_append_many_keeps_order_and_dedups(self, room_log: RoomLogPort) -> None:
        items = [(leave(f"room-{i % 7}", i), f"m{i}") for i in range(200)]
        seqs = await room_log.append_many(items, window=16)
        assert seqs == list(range(1, 201))
        assert await room_log.append_many(items[:10] + items[-3:]) == seqs[:10] + seqs[-3:]
        assert await room_log.append(*items[41]) == 42
        assert await room_log.last_seq() == 200
        assert await room_log.append_many([]) == []
        with pytest.raises(ValueError):
            await room_log.append_many(items, window=0)

    async def test_appends_fail_loudly_before_the_streams_exist(self, make_log: MakeLog) -> None:
        room_log = make_log()
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await room_log.append(leave("r", 1), "m1")
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await room_log.append_many([(leave("r", 1), "m1")])
        await room_log.ensure()
        await room_log.ensure()  # repeatable
        assert await room_log.append(leave("r", 1), "m1") == 1

    async def test_public_events_have_their_own_sequence_and_dedup(
        self, room_log: RoomLogPort
    ) -> None:
        await room_log.append_many([(leave("r", i), f"m{i}") for i in range(3)])
        seq = await room_log.publish_event("a.b", "room_started", started(0, "a.b"), "ev0")
        assert seq == 1
        assert await room_log.publish_event("a.b", "room_started", started(0, "a.b"), "ev0") == 1
        batch = [("r", "room_started", started(i), f"ev{i}") for i in range(1, 31)]
        seqs = await room_log.publish_events(batch, window=4)
        assert seqs == list(range(2, 32))
        assert await room_log.publish_events(batch[:5]) == seqs[:5]
        assert await room_log.publish_events([("r", "room_started", started(0), "ev0")]) == [1]
        assert await room_log.last_seq() == 3  # the log is another stream
        with pytest.raises(ValueError):
            await room_log.publish_events(batch, window=0)

    async def test_an_event_batch_is_stored_once_each_in_order(self, room_log: RoomLogPort) -> None:
        assert await room_log.publish_event_batch([]) == 0
        batch = [("r", "room_started", started(i), f"ev{i}") for i in range(1, 31)]
        assert await room_log.publish_event_batch(batch[:20]) == 20
        # Republished with new ones after it (a statekeeper's replay): only those are new.
        assert await room_log.publish_event_batch(batch) == 30
        assert await room_log.publish_event_batch(batch[5:9]) == 0  # nothing new
        assert await room_log.publish_events(batch[-2:]) == [29, 30]
        assert await room_log.publish_event_batch(batch[-1:]) == 0
        assert await room_log.publish_event_batch([("r", "room_started", started(0), "ev0")]) == 31

    async def test_records_carry_the_event_its_bytes_and_when_it_was_stored(
        self, room_log: RoomLogPort
    ) -> None:
        events = [leave("lobby", i) for i in range(3)]
        await room_log.append_many((e, f"m{i}") for i, e in enumerate(events))
        async with room_log.reader([0], 1) as reader:
            records = await read(reader, 3)
        assert [(r.seq, r.event, r.data) for r in records] == [
            (i + 1, e, encode(e)) for i, e in enumerate(events)
        ]
        assert all(r.stored_at > 0 for r in records)

    async def test_a_reader_follows_the_log_from_its_start(self, room_log: RoomLogPort) -> None:
        events = [leave("r", i) for i in range(10)]
        await room_log.append_many((e, f"m{i}") for i, e in enumerate(events))
        async with room_log.reader([0], 4) as reader:
            assert reader.last_seq == 3
            first = await read(reader, 7)
            assert [(r.seq, r.event) for r in first] == list(
                zip(range(4, 11), events[3:], strict=True)
            )
            assert reader.last_seq == 10
            await nothing_more(reader)
            live = [leave("r", i) for i in range(10, 25)]
            for i, event in enumerate(live):
                await room_log.append(event, f"live{i}")
            later = await read(reader, 15)
            assert [(r.seq, r.event) for r in later] == list(zip(range(11, 26), live, strict=True))
            assert reader.last_seq == 25
            await nothing_more(reader)

    async def test_reading_past_the_end_waits_for_the_start_sequence(
        self, room_log: RoomLogPort
    ) -> None:
        await room_log.append(leave("r", 1), "m1")
        async with room_log.reader(None, 3) as reader:
            await nothing_more(reader)
            await room_log.append(leave("r", 2), "m2")
            await nothing_more(reader)
            await room_log.append(leave("r", 3), "m3")
            assert [r.seq for r in await read(reader, 1)] == [3]

    async def test_a_reader_iterates_and_opens_once(self, room_log: RoomLogPort) -> None:
        await room_log.append_many((leave("r", i), f"m{i}") for i in range(5))
        got: list[int] = []
        reader = room_log.reader([0], 2)
        async with reader:
            async for seq, event, data, _stored_at in reader:
                assert event is not None and data == encode(event)
                got.append(seq)
                if seq == 5:
                    break
        assert got == [2, 3, 4, 5]
        with pytest.raises(RuntimeError):
            async with reader:
                pass

    async def test_readers_see_only_their_partitions(self, make_log: MakeLog) -> None:
        room_log = make_log(4)
        await room_log.ensure()
        rooms = [f"room-{i}" for i in range(24)] + ["a.b", "café", "x y"]
        items = [(leave(room, n), f"m{n}") for n, room in enumerate(rooms * 3)]
        seqs = await room_log.append_many(items)
        stored = [(seq, event) for seq, (event, _) in zip(seqs, items, strict=True)]
        assert len({subjects.partition_of(room, 4) for room in rooms}) > 1
        for partition in range(4):
            mine = [(s, e) for s, e in stored if subjects.partition_of(e.room_id, 4) == partition]
            async with room_log.reader([partition], 1) as reader:
                records = await read(reader, len(mine)) if mine else []
                await nothing_more(reader)
            assert [(r.seq, r.event) for r in records] == mine
        async with room_log.reader([1, 3], 1) as reader:
            expected = [s for s, e in stored if subjects.partition_of(e.room_id, 4) in (1, 3)]
            assert [r.seq for r in await read(reader, len(expected))] == expected
        with pytest.raises(ValueError):
            room_log.reader([], 1)


# --------------------------------------------------------------------------- the twin only


async def test_the_twin_forgets_a_message_id_after_the_duplicate_window() -> None:
    now = [1_000]
    room_log = MemoryRoomLog(clock=lambda: now[0])
    await room_log.ensure()
    assert await room_log.append(leave("r", 1), "id") == 1
    now[0] += int(DUPLICATE_WINDOW * 1000) - 1
    assert await room_log.append(leave("r", 1), "id") == 1
    now[0] += 1
    assert await room_log.append(leave("r", 1), "id") == 2
    async with room_log.reader(None, 1) as reader:
        assert [r.stored_at for r in await read(reader, 2)] == [1_000, now[0]]


async def test_the_twin_keeps_public_events_for_tests_to_read() -> None:
    room_log = MemoryRoomLog()
    await room_log.ensure()
    await room_log.publish_events([("a.b", "room_started", started(1, "a.b"), "ev1")] * 2)
    assert room_log.events == [("stagecast.events.~YS5i.room_started", started(1, "a.b"))]
