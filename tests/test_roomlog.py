"""The room log on a real JetStream: streams, the server's partitions, the reader's recovery.

What every room log does (the twin too) is pinned in `tests/test_roomlog_contract.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sys
from types import SimpleNamespace

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.protocol.parser import Parser

from processes.natsserver import NatsServer
from roomlog import appends, jetstream
from roomlog.errors import LogUnavailable
from roomlog.log import RoomLog
from roomlog.reader import log_partitions_filter
from schemas import subjects
from schemas.codec import encode
from schemas.events import RoomStarted
from schemas.log import LeaveRequested, MetadataSet
from schemas.models import RoomInfo
from tests.polling import eventually
from tests.reading import nothing_more, read


def leave(room_id: str, n: int) -> LeaveRequested:
    return LeaveRequested(room_id=room_id, at=1_700_000_000_000 + n, sid=f"s{n}")


@pytest.fixture
async def room_log(js: JetStreamContext) -> RoomLog:
    log = RoomLog(js)
    await log.ensure()
    return log


# --------------------------------------------------------------------------- streams


async def test_ensure_creates_both_streams(js: JetStreamContext) -> None:
    await RoomLog(js, partitions=4).ensure()
    log_cfg = (await js.stream_info(subjects.LOG_STREAM)).config
    assert log_cfg.subjects == ["stagecast.log.*"]
    assert log_cfg.subject_transform is not None
    assert log_cfg.subject_transform.src == "stagecast.log.*"
    assert log_cfg.subject_transform.dest == "stagecast.logp.{{partition(4,1)}}.{{wildcard(1)}}"
    assert log_cfg.storage == "file"
    assert log_cfg.duplicate_window == 120
    assert log_cfg.max_msg_size == 1024 * 1024
    events_cfg = (await js.stream_info(subjects.EVENTS_STREAM)).config
    assert events_cfg.subjects == ["stagecast.events.>"]
    assert events_cfg.duplicate_window == 120
    assert events_cfg.max_age == 7 * 24 * 3600


async def test_ensure_is_repeatable_and_keeps_the_partition_count_of_the_creation(
    js: JetStreamContext,
) -> None:
    await RoomLog(js, partitions=3).ensure()
    await RoomLog(js, partitions=3).ensure()
    await RoomLog(js, partitions=1).ensure()  # an edge, which does not know the partitions
    transform = (await js.stream_info(subjects.LOG_STREAM)).config.subject_transform
    assert transform is not None
    assert transform.dest == "stagecast.logp.{{partition(3,1)}}.{{wildcard(1)}}"


# --------------------------------------------------------------------------- appends


async def test_append_without_streams_fails_loudly(js: JetStreamContext) -> None:
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await RoomLog(js, ack_timeout=1).append(leave("r", 1), "m1")
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await RoomLog(js, ack_timeout=1).append_many([(leave("r", 1), "m1")])


async def test_append_many_raises_what_the_server_rejects(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    config = room_log.log_stream_config()
    config.max_msg_size = 200  # a stream someone misconfigured
    await js.update_stream(config)
    small = [(leave("r", i), f"m{i}") for i in range(3)]
    big = MetadataSet(room_id="r", at=1, sid="s", metadata="x" * 500)
    with pytest.raises(nats.js.errors.APIError) as caught:
        await room_log.append_many([*small, (big, "big"), *small])
    assert caught.value.err_code == 10054  # message size exceeds maximum allowed
    assert (await js.stream_info(subjects.LOG_STREAM)).state.messages == 3


async def test_publish_event_lands_in_the_events_stream_once(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    event = RoomStarted(id="ev1", at=1, room=RoomInfo(id="a.b", sid="RM_1"))
    seq = await room_log.publish_event("a.b", "room_started", event, "ev1")
    assert await room_log.publish_event("a.b", "room_started", event, "ev1") == seq
    stored = await js.get_msg(subjects.EVENTS_STREAM, seq)
    assert stored.subject == "stagecast.events.~YS5i.room_started"
    assert stored.data == encode(event)
    assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 1


@pytest.mark.parametrize("fast", [True, False], ids=["raw-acks", "msg-acks"])
async def test_single_appends_on_a_shared_inbox_answer_as_requests_do(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """`shared_inbox` (the edge's appends): the same sequences, deduplication and errors as
    a nats-py request per append, with the acks raw unless nats-py's internals moved."""
    if not fast:
        monkeypatch.setattr(jetstream.FastDelivery, "route", classmethod(lambda *a: False))
    with pytest.raises(nats.js.errors.NoStreamResponseError):  # no stream yet
        await RoomLog(js, ack_timeout=1, shared_inbox=True).append(leave("r", 0), "m0")
    await RoomLog(js).ensure()
    shared = RoomLog(js, ack_timeout=1, shared_inbox=True)
    plain = RoomLog(js, ack_timeout=1)
    first = await shared.append(leave("r", 1), "m1")
    assert shared.acks is not None and shared.acks.fast_path is fast
    seqs = await asyncio.gather(*(shared.append(leave("r", i), f"m{i}") for i in range(2, 12)))
    assert sorted(seqs) == list(range(first + 1, first + 11))
    assert await shared.append(leave("r", 1), "m1") == first  # deduplicated
    assert await plain.append(leave("r", 5), "m5") == seqs[3]
    config = shared.log_stream_config()
    config.max_msg_size = 200
    await js.update_stream(config)
    big = MetadataSet(room_id="r", at=1, sid="s", metadata="x" * 500)
    with pytest.raises(nats.js.errors.APIError) as caught:
        await shared.append(big, "big")
    assert caught.value.err_code == 10054  # message size exceeds maximum allowed
    assert (await js.stream_info(subjects.LOG_STREAM)).state.messages == 11


async def test_publish_all_writes_what_publish_writes_in_one_go(nc: NATS) -> None:
    assert jetstream.raw_publishing(nc), "nats-py internals moved: see jetstream.publish_all"
    got: list[tuple[str, str, bytes, str | None]] = []

    async def record(msg: Msg) -> None:
        msg_id = (msg.headers or {}).get(jetstream.MSG_ID)
        got.append((msg.subject, msg.reply, msg.data, msg_id))

    await nc.subscribe("pa.>", cb=record)
    sent: list[jetstream.Publish] = [
        ("pa.one", "", b"1", None),
        ("pa.two", "pa.inbox.2", b"", "id-2"),
        ("pa.three", "", b"three", "id with space"),  # a header value publish cleans up
        ("pa.four", "", b"x" * 10, None),
    ]
    before = nc.stats["out_msgs"]
    await jetstream.publish_all(nc, sent)
    await nc.flush()
    await eventually(lambda: len(got) == 4, what="the 4 messages")
    assert got == sent
    assert nc.stats["out_msgs"] - before == 4
    with pytest.raises(nats.errors.BadSubjectError):  # as publish raises, after the first
        await jetstream.publish_all(nc, [("pa.five", "", b"5", None), ("pa six", "", b"", None)])
    await nc.flush()
    await eventually(lambda: len(got) == 5, what="the 5th message")
    assert got[-1] == ("pa.five", "", b"5", None)


def test_publish_all_writes_as_is_only_what_has_no_whitespace() -> None:
    # The fast path's check is cheaper than a regex: it must never let whitespace through.
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(c))]
    assert len(spaces) > 20  # ASCII's and Unicode's
    for space in spaces:
        assert not jetstream._plain(f"pa.{space}.x"), repr(space)
    assert not jetstream._plain("")
    assert jetstream._plain("stagecast.sess.ED_bench.PA_v1")
    assert jetstream._plain("_INBOX.abc.def1.500.fail.2.1.$FI")
    assert jetstream._plain("stagecast.events.salle-é.participant_joined")


class _Heard:
    """What a protocol parser hands its client, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[object, ...]] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.heard.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self) -> None:
        self.heard.append(("ping",))

    async def _process_pong(self) -> None:
        self.heard.append(("pong",))

    async def _process_info(self, info: object) -> None:
        self.heard.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.heard.append(("err", err))


def _protocol_stream(rng: random.Random, lines: int) -> bytes:
    """What a server sends: deliveries with and without headers and replies, statuses, and
    the other operations, some spelled in ways only nats-py's own parser reads."""
    out = bytearray()
    for i in range(lines):
        payload = rng.randbytes(rng.randrange(0, 40))
        reply = rng.choice(["", f" $JS.ACK.S.c.1.{i}.{i}.1765160000000000000.0"])
        kind = rng.randrange(10)
        if kind < 4:
            head = f"NATS/1.0\r\nNats-Msg-Id: m{i}\r\n\r\n".encode()
            out += (
                f"HMSG log.{i} {i % 9}{reply} {len(head)} {len(head) + len(payload)}\r\n".encode()
            )
            out += head + payload + b"\r\n"
        elif kind == 4:  # a status, no payload
            head = b"NATS/1.0 408 Request Timeout\r\n\r\n"
            out += f"HMSG _INBOX.x.1 2 {len(head)} {len(head)}\r\n".encode() + head + b"\r\n"
        elif kind < 8:
            out += f"MSG s.{i} {i % 5}{reply} {len(payload)}\r\n".encode() + payload + b"\r\n"
        elif kind == 8:
            out += rng.choice(
                [b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b'INFO {"max_payload":1048576}\r\n']
            )
        else:  # a tab, or two spaces: left to nats-py's parser
            op = rng.choice(["MSG\t", "MSG  "])
            out += f"{op}t.{i} 1 {len(payload)}\r\n".encode() + payload + b"\r\n"
    return bytes(out)


async def _parse_in_pieces(
    fast: bool, data: bytes, cuts: list[int]
) -> tuple[list[tuple[object, ...]], bytes, int]:
    client = _Heard()
    parser = Parser(client)
    if fast:
        assert jetstream.install_fast_parse(SimpleNamespace(_ps=parser))
    start = 0
    for cut in [*cuts, len(data)]:
        await parser.parse(data[start:cut])
        start = cut
    return client.heard, bytes(parser.buf), parser.state


@pytest.mark.parametrize("seed", range(40))
async def test_the_fast_parser_hears_what_nats_py_hears_however_the_stream_is_cut(
    seed: int,
) -> None:
    rng = random.Random(seed)
    data = _protocol_stream(rng, 200)
    if seed % 10 == 0:
        cuts = list(range(1, len(data)))  # byte by byte
    else:
        cuts = sorted(rng.sample(range(1, len(data)), rng.choice([1, 5, 40, 300])))
    slow = await _parse_in_pieces(False, data, cuts)
    assert len(slow[0]) >= 190  # it all came through (the last line may be cut)
    assert await _parse_in_pieces(True, data, cuts) == slow


async def test_the_fast_parser_refuses_what_nats_py_refuses() -> None:
    for fast in (False, True):
        with pytest.raises(nats.errors.ProtocolError):
            await _parse_in_pieces(fast, b"MSG a 1 0\r\n\r\nBOGUS 1\r\n", [])


@pytest.mark.parametrize(
    ("ack", "seq"),
    [
        (b'{"stream":"S","seq":12}', 12),
        (b'{"stream":"S","seq":7,"duplicate":true}', 7),
        (b'{"stream":"S","domain":"d","seq":3}', 3),
    ],
)
def test_an_ack_gives_its_stream_sequence(ack: bytes, seq: int) -> None:
    assert appends._ack_seq(ack) == seq


def test_an_ack_with_an_error_raises_it() -> None:
    ack = b'{"error":{"code":400,"err_code":10054,"description":"too big"},"seq":0}'
    with pytest.raises(nats.js.errors.APIError) as caught:
        appends._ack_seq(ack)
    assert caught.value.err_code == 10054


def test_an_unreadable_ack_is_an_api_error() -> None:
    with pytest.raises(nats.js.errors.APIError, match="unreadable publish ack"):
        appends._ack_seq(b"not json")


# --------------------------------------------------------------------------- partitions


async def test_with_one_partition_everything_is_in_partition_zero(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    for i, room_id in enumerate(["lobby", "a.b", "é"]):
        seq = await room_log.append(leave(room_id, i), f"m{i}")
        stored = await js.get_msg(subjects.LOG_STREAM, seq)
        assert stored.subject == f"stagecast.logp.0.{subjects.room_token(room_id)}"


async def test_rooms_map_to_the_partitions_the_server_computes(
    js: JetStreamContext,
) -> None:
    """Readers of partitions are in the contract (`tests/test_roomlog_contract.py`); the twin
    partitions rooms with `partition_of`, which this pins to the server's transform."""
    room_log = RoomLog(js, partitions=4)
    await room_log.ensure()
    rooms = [f"room-{i}" for i in range(24)] + ["a.b", "café", "x y"]
    items = [(leave(room, n), f"m{n}") for n, room in enumerate(rooms * 3)]
    seqs = await room_log.append_many(items)
    seen: dict[str, set[int]] = {}
    for seq, (event, _) in zip(seqs, items, strict=True):
        message = await js.get_msg(subjects.LOG_STREAM, seq)
        assert message.subject is not None
        _, _, stored_in, token = message.subject.split(".")
        assert subjects.room_id_from_token(token) == event.room_id
        seen.setdefault(event.room_id, set()).add(int(stored_in))
    assert all(len(p) == 1 for p in seen.values()), "a room always maps to one partition"
    # The Python mirror of the server's hash agrees with the server.
    assert {room: p.pop() for room, p in seen.items()} == {
        room: subjects.partition_of(room, 4) for room in rooms
    }
    assert len({subjects.partition_of(room, 4) for room in rooms}) > 1


def test_log_partitions_filter() -> None:
    assert log_partitions_filter(None) == []
    assert log_partitions_filter([2, 0, 2]) == ["stagecast.logp.0.*", "stagecast.logp.2.*"]


# --------------------------------------------------------------------------- reading


async def test_small_batches_take_many_pulls_on_the_fast_path(room_log: RoomLog) -> None:
    """What a reader hands out is in the contract; this is how it gets it from the server."""
    await room_log.append_many((leave("r", i), f"m{i}") for i in range(10))
    async with room_log.reader([0], 4, batch=4) as reader:
        assert reader.fast_path, "nats-py internals moved: see roomlog.jetstream.FastDelivery"
        assert jetstream.fast_parse_installed(jetstream.connection_of(room_log.js)), (
            "nats-py internals moved: see roomlog.jetstream.install_fast_parse"
        )
        assert [r.seq for r in await read(reader, 7)] == list(range(4, 11))
        for i in range(10, 25):  # live appends, one at a time
            await room_log.append(leave("r", i), f"live{i}")
        assert [r.seq for r in await read(reader, 15)] == list(range(11, 26))
        await nothing_more(reader)
    assert reader.resets == 0


async def test_an_idle_reader_keeps_its_consumer_across_expired_pulls(
    room_log: RoomLog,
) -> None:
    async with room_log.reader([0], 1, batch=10, heartbeat=0.1, expires=0.3) as reader:
        for _ in range(8):  # ~1.6s: pull requests expire (408) and are renewed several times
            assert await reader.next_batch(0.2) == []
        assert reader.resets == 0
        await room_log.append_many((leave("r", i), f"m{i}") for i in range(25))
        assert [r.seq for r in await read(reader, 25)] == list(range(1, 26))
        assert reader.resets == 0


async def test_a_waiting_reader_wakes_on_a_delivery_without_a_task_of_its_own(
    room_log: RoomLog,
) -> None:
    """The statekeeper waits for the log once per delivery under a join storm: the wait
    is one future woken by the delivery, not a task per wait (`asyncio.wait_for`)."""
    async with room_log.reader([0], 1, batch=10) as reader:
        tasks_before = len(asyncio.all_tasks())
        waiting = asyncio.create_task(reader.next_batch(30.0))
        await eventually(lambda: reader._waiter is not None, what="the reader waiting")
        assert len(asyncio.all_tasks()) == tasks_before + 1  # `waiting` itself, nothing more
        await room_log.append(leave("r", 1), "m1")
        assert [r.seq for r in await asyncio.wait_for(waiting, 10)] == [1]
        assert reader._waiter is None
        closing = asyncio.create_task(reader.next_batch(30.0))
        await eventually(lambda: reader._waiter is not None, what="the reader waiting")
        await reader.close()  # wakes the wait: nothing more comes
        assert await asyncio.wait_for(closing, 10) == []


async def test_consume_iterates_and_cleans_up(room_log: RoomLog, js: JetStreamContext) -> None:
    await room_log.append_many((leave("r", i), f"m{i}") for i in range(5))
    got: list[int] = []
    async with contextlib.aclosing(room_log.consume([0], 2)) as records:
        async for seq, event, data, _stored_at in records:
            assert event is not None and data == encode(event)
            got.append(seq)
            if seq == 5:
                break
    assert got == [2, 3, 4, 5]

    async def consumers() -> int:
        return int((await js.stream_info(subjects.LOG_STREAM)).state.consumer_count)

    assert await consumers() == 0


async def test_a_bad_message_yields_none_and_reading_goes_on(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    await room_log.append(leave("r", 1), "m1")
    await js.publish(subjects.room_log("r"), b"\xc1 not msgpack")
    not_a_log_event = RoomStarted(id="e", at=1, room=RoomInfo(id="r", sid="RM_1"))
    await js.publish(subjects.room_log("r"), encode(not_a_log_event))
    await js.publish(subjects.room_log("r"), b"")
    await room_log.append(leave("r", 5), "m5")
    async with room_log.reader([0], 1) as reader:
        records = await read(reader, 5)
        assert reader.undecodable == 3
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [r.event is None for r in records] == [False, True, True, True, False]
    assert records[1].data == b"\xc1 not msgpack"
    assert records[4].event == leave("r", 5)


async def test_the_reader_recovers_when_its_consumer_is_deleted(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    await room_log.append_many((leave("r", i), f"m{i}") for i in range(3))
    async with room_log.reader([0], 1, heartbeat=0.2, expires=1.0) as reader:
        assert [r.seq for r in await read(reader, 3)] == [1, 2, 3]
        name = reader.consumer_name
        assert name is not None
        await js.delete_consumer(subjects.LOG_STREAM, name)
        await room_log.append_many((leave("r", i), f"m{i}") for i in range(3, 6))
        assert [r.seq for r in await read(reader, 3)] == [4, 5, 6]
        assert reader.resets >= 1 and reader.consumer_name != name
        await nothing_more(reader)


async def test_the_reader_survives_a_server_crash(
    nats_server: NatsServer, nc: NATS, room_log: RoomLog
) -> None:
    await room_log.append_many((leave("r", i), f"m{i}") for i in range(50))
    async with room_log.reader([0], 1, heartbeat=0.2, expires=1.0) as reader:
        assert [r.seq for r in await read(reader, 50)] == list(range(1, 51))
        nats_server.kill()
        await nats_server.start()
        await eventually(lambda: nc.is_connected, what="the client to reconnect")
        await eventually(
            lambda: room_log.append_many((leave("r", i), f"m{i}") for i in range(50, 80)),
            what="appends after the restart",
        )
        assert [r.seq for r in await read(reader, 30)] == list(range(51, 81))
        await nothing_more(reader)
        assert reader.resets >= 1


async def test_the_reader_recovers_from_a_stalled_server(
    nats_server: NatsServer, room_log: RoomLog
) -> None:
    await room_log.append_many((leave("r", i), f"m{i}") for i in range(5))
    async with room_log.reader([0], 1, heartbeat=0.1, expires=1.0) as reader:
        assert [r.seq for r in await read(reader, 5)] == [1, 2, 3, 4, 5]
        pid = nats_server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # no heartbeats, no errors: only the watchdog notices
        try:
            assert await reader.next_batch(1.0) == []
        finally:
            os.kill(pid, signal.SIGCONT)
        await room_log.append_many((leave("r", i), f"m{i}") for i in range(5, 8))
        assert [r.seq for r in await read(reader, 3)] == [6, 7, 8]
        assert reader.resets >= 1
        await nothing_more(reader)


async def test_the_reader_gives_up_after_max_outage(
    nats_server: NatsServer, room_log: RoomLog
) -> None:
    await room_log.append(leave("r", 1), "m1")
    async with room_log.reader([0], 1, heartbeat=0.1, expires=1.0, max_outage=0.5) as reader:
        assert [r.seq for r in await read(reader, 1)] == [1]
        nats_server.kill()
        with pytest.raises(LogUnavailable) as caught:
            for _ in range(100):  # bounded: each call waits at most 0.2s
                await reader.next_batch(0.2)
        assert caught.value.stream == subjects.LOG_STREAM


async def test_opening_a_reader_without_the_stream_fails(js: JetStreamContext) -> None:
    with pytest.raises(nats.js.errors.NotFoundError):
        async with RoomLog(js).reader([0], 1):
            pass


async def test_the_reader_works_without_the_fast_path(
    room_log: RoomLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetstream.FastDelivery, "route", classmethod(lambda *a: False))
    await room_log.append_many((leave("r", i), f"m{i}") for i in range(20))
    async with room_log.reader([0], 1, batch=8) as reader:
        assert not reader.fast_path
        assert [r.seq for r in await read(reader, 20)] == list(range(1, 21))
        await room_log.append(MetadataSet(room_id="r", at=1, sid="s", metadata="m"), "x")
        assert [r.seq for r in await read(reader, 1)] == [21]


# --------------------------------------------------------------------------- paced reads


def _read_transport(nc: NATS) -> asyncio.ReadTransport:
    transport = nc._transport._io_reader._transport  # type: ignore[union-attr]
    assert isinstance(transport, asyncio.ReadTransport)
    return transport


async def test_paced_reads_pause_after_a_short_read_and_lose_nothing(
    nc: NATS, nats_url: str
) -> None:
    """After a read that emptied the socket the client stops reading for the gap, then
    reads again; every message arrives once and in order, a burst larger than one read
    included (a read that fills nats-py's buffer is not paced)."""
    assert not jetstream.pace_reads(nc, 0.0)
    assert jetstream.pace_reads(nc, 1.0)
    parse = vars(nc._ps)["parse"]
    assert jetstream.pace_reads(nc, 1.0)  # once: the parser is not wrapped twice
    assert vars(nc._ps)["parse"] is parse
    heard: list[bytes] = []
    paused_after: list[bool] = []

    async def on_msg(msg: Msg) -> None:
        heard.append(msg.data)

    await nc.subscribe("paced", cb=on_msg)
    await nc.flush()
    sender = await nats.connect(nats_url)
    try:
        await sender.publish("paced", b"first")
        await sender.flush()
        await eventually(lambda: heard == [b"first"], what="the first message")
        for _ in range(5):  # the read's parse has returned by now
            await asyncio.sleep(0)
        paused_after.append(_read_transport(nc).is_reading())
        await eventually(lambda: _read_transport(nc).is_reading(), what="reading again")
        burst = [b"%d" % i + b"x" * 1_000 for i in range(200)]  # ~200 KiB, several reads
        for data in burst:
            await sender.publish("paced", data)
        await sender.flush()
        await eventually(lambda: len(heard) == 1 + len(burst), what="the burst")
        assert heard == [b"first", *burst]
    finally:
        await sender.close()
    assert paused_after == [False]


async def test_paced_reads_leave_other_links_alone() -> None:
    assert not jetstream.pace_reads(SimpleNamespace(_ps=None), 0.005)
