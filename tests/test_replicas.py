"""The room log replicated on a real 3-node nats-server cluster: replicas, and node loss.

`ensure` gives the streams `replicas` copies and never lowers them; raising the replicas
of a stream keeps its messages (they survive the loss of the node that held them alone);
appends carried across the SIGKILL of the stream leader lose nothing that was acknowledged
and store nothing twice; the log reader goes on when the node holding its consumer dies;
KV buckets follow the streams' replica rule.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from processes.natsserver import NatsServer
from roomlog.buckets import bucket_stream, ensure_bucket
from roomlog.connect import connect
from roomlog.errors import StreamNotEnsured
from roomlog.log import RoomLog
from roomlog.natslink import NatsLink
from roomlog.retry import RetryPolicy
from schemas import subjects
from schemas.log import LeaveRequested
from tests.cluster_fixtures import NatsCluster, nats_cluster
from tests.reading import read

log = logging.getLogger(__name__)

APPENDS = 2000
APPENDERS = 4
MAX_BATCHES = 400
BATCH = 20
KILL_AFTER_ACKS = 300


def event(msg_id: str) -> LeaveRequested:
    """A log event that carries its own message id (in `sid`), to find it again."""
    return LeaveRequested(room_id=f"room-{hash(msg_id) % 7}", at=1_700_000_000_000, sid=msg_id)


async def replicas_of(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).config.num_replicas or 1)


@pytest.fixture
async def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with nats_cluster(tmp_path) as running:
        yield running


async def connected(cluster: NatsCluster, name: str):  # type: ignore[no-untyped-def]
    return await connect(cluster.url, name=name, link=NatsLink(name, log), reconnect_time_wait=0.1)


# --------------------------------------------------------------------------- replicas


async def test_ensure_creates_r3_streams_and_never_lowers_them(cluster: NatsCluster) -> None:
    nc = await connected(cluster, "ensure")
    try:
        js = nc.jetstream()
        await RoomLog(js, replicas=3).ensure()
        for stream in (subjects.LOG_STREAM, subjects.EVENTS_STREAM):
            assert await replicas_of(js, stream) == 3
            await cluster.wait_replicated(stream, 3)
        await RoomLog(js, replicas=1).ensure()  # an edge started without --replicas
        for stream in (subjects.LOG_STREAM, subjects.EVENTS_STREAM):
            assert await replicas_of(js, stream) == 3
    finally:
        await nc.close()


async def test_raising_replicas_keeps_every_message_through_a_node_loss(
    cluster: NatsCluster,
) -> None:
    nc = await connected(cluster, "raise")
    try:
        js = nc.jetstream()
        await RoomLog(js, replicas=1).ensure()
        room_log = RoomLog(js, replicas=1)
        seqs = await room_log.append_many([(event(f"m{i}"), f"m{i}") for i in range(50)])
        assert seqs == list(range(1, 51))
        alone = await cluster.stream_leader(subjects.LOG_STREAM)
        assert alone is not None

        await RoomLog(js, replicas=3).ensure()
        assert await replicas_of(js, subjects.LOG_STREAM) == 3
        await cluster.wait_replicated(subjects.LOG_STREAM, 3)
    finally:
        await nc.close()

    cluster.kill(alone)  # the node that held the only copy before the update
    await cluster.wait_replicated(subjects.LOG_STREAM, 2)
    nc = await connected(cluster, "after")
    try:
        async with RoomLog(nc.jetstream()).reader(None, 1) as reader:
            records = await read(reader, 50)
        assert [r.event.sid for r in records if isinstance(r.event, LeaveRequested)] == [
            f"m{i}" for i in range(50)
        ]
    finally:
        await nc.close()


async def test_more_replicas_than_servers_is_a_named_error(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, name="single", link=NatsLink("single", log))
    try:
        with pytest.raises(StreamNotEnsured) as refused:
            await RoomLog(nc.jetstream(), replicas=3).ensure()
        assert refused.value.stream == subjects.LOG_STREAM
        assert refused.value.replicas == 3
    finally:
        await nc.close()


def test_replicas_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        RoomLog(None, replicas=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replicas"):
        RoomLog(None, replicas=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate window"):
        RoomLog(None, retry=RetryPolicy(deadline=120))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- node loss


async def test_killing_the_stream_leader_loses_no_acknowledged_append(
    cluster: NatsCluster,
) -> None:
    nc = await connected(cluster, "appender")
    try:
        room_log = RoomLog(nc.jetstream(), replicas=3, ack_timeout=1.0, retry=RetryPolicy())
        await room_log.ensure()
        leader = await cluster.wait_replicated(subjects.LOG_STREAM, 3)

        acked: dict[str, int] = {}
        ack_times: list[float] = []
        failed: list[str] = []
        enough = asyncio.Event()

        async def appender(first: int) -> None:
            for i in range(first, APPENDS, APPENDERS):
                msg_id = f"a{i}"
                try:
                    acked[msg_id] = await room_log.append(event(msg_id), msg_id)
                except Exception as exc:  # counted: only acknowledged appends must be kept
                    log.info("append %s failed: %r", msg_id, exc)
                    failed.append(msg_id)
                    continue
                ack_times.append(time.monotonic())
                if len(acked) >= KILL_AFTER_ACKS:
                    enough.set()

        singles_done = asyncio.Event()

        async def batch_appender() -> None:  # the pipelined path (`publish_all`), throughout
            for b in range(MAX_BATCHES):
                if singles_done.is_set():
                    return
                ids = [f"b{b}-{i}" for i in range(BATCH)]
                try:
                    seqs = await room_log.append_many([(event(m), m) for m in ids], window=16)
                except Exception as exc:
                    log.info("batch %d failed: %r", b, exc)
                    failed.extend(ids)
                    continue
                acked.update(zip(ids, seqs, strict=True))
                ack_times.append(time.monotonic())

        singles = [asyncio.create_task(appender(n)) for n in range(APPENDERS)]
        batches = asyncio.create_task(batch_appender())
        await asyncio.wait_for(enough.wait(), 60)
        cluster.kill(leader)
        await asyncio.wait_for(asyncio.gather(*singles), 300)
        singles_done.set()
        await asyncio.wait_for(batches, 60)

        outage = room_log.outages[subjects.LOG_STREAM]
        gaps = [b - a for a, b in itertools.pairwise(ack_times)]
        print(
            f"\nleader {leader} killed: {len(acked)} acked "
            f"({sum(m.startswith('b') for m in acked)} in batches), {len(failed)} failed, "
            f"longest write gap {max(gaps):.2f} s, {outage.outages} outage(s), "
            f"{outage.retries} retries"
        )
        assert outage.failing_since is None  # the last append worked: the outage ended

        last = await room_log.last_seq()
        async with room_log.reader(None, 1) as reader:
            records = await read(reader, last, max_wait=30.0)
    finally:
        await nc.close()

    stored: dict[str, int] = {}
    for record in records:
        assert isinstance(record.event, LeaveRequested)
        assert record.event.sid not in stored, f"{record.event.sid} stored twice"
        stored[record.event.sid] = record.seq
    lost = {m for m in acked if m not in stored}
    assert not lost, f"acknowledged but not stored: {sorted(lost)[:10]}"
    assert all(stored[m] == seq for m, seq in acked.items())  # the ack told the truth
    assert len(acked) >= KILL_AFTER_ACKS
    assert any(m.startswith("b") for m in acked)


# --------------------------------------------------------------------------- KV buckets


async def test_buckets_follow_the_same_replica_rule(cluster: NatsCluster) -> None:
    nc = await connected(cluster, "buckets")
    try:
        js = nc.jetstream()
        leases = await ensure_bucket(js, KeyValueConfig(bucket="leases", replicas=3, ttl=30))
        await cluster.wait_replicated(bucket_stream("leases"), 3)
        await leases.put("p0", b"keeper-a")
        assert await replicas_of(js, bucket_stream("leases")) == 3
        again = await ensure_bucket(js, KeyValueConfig(bucket="leases", replicas=1))
        assert await replicas_of(js, bucket_stream("leases")) == 3  # never lowered
        assert (await again.get("p0")).value == b"keeper-a"

        small = await ensure_bucket(js, KeyValueConfig(bucket="small", replicas=1))
        # A bucket just made answers "no responders" until its stream has a leader (seen
        # on a loaded machine): the puts wait for it, as they would for an election.
        await cluster.wait_replicated(bucket_stream("small"), 1)
        for i in range(20):
            await small.put(f"k{i}", str(i).encode())
        raised = await ensure_bucket(js, KeyValueConfig(bucket="small", replicas=3))
        assert await replicas_of(js, bucket_stream("small")) == 3
        await cluster.wait_replicated(bucket_stream("small"), 3)
        assert [(await raised.get(f"k{i}")).value for i in range(20)] == [
            str(i).encode() for i in range(20)
        ]
    finally:
        await nc.close()


# --------------------------------------------------------------------------- the reader


async def test_the_log_reader_goes_on_when_its_consumer_node_dies(cluster: NatsCluster) -> None:
    nc = await connected(cluster, "reader")
    try:
        js = nc.jetstream()
        room_log = RoomLog(js, replicas=3, ack_timeout=1.0)
        await room_log.ensure()
        await cluster.wait_replicated(subjects.LOG_STREAM, 3)
        await room_log.append_many([(event(f"r{i}"), f"r{i}") for i in range(100)])
        async with room_log.reader(None, 1, heartbeat=0.5, expires=5.0) as reader:
            first = await read(reader, 100)
            assert reader.consumer_name is not None
            info = await js.consumer_info(subjects.LOG_STREAM, reader.consumer_name)
            assert info.cluster is not None and info.cluster.leader
            holder = info.cluster.leader
            cluster.kill(holder)  # the node holding the reader's one-replica consumer
            await room_log.append_many([(event(f"r{i}"), f"r{i}") for i in range(100, 200)])
            rest = await read(reader, 100, max_wait=30.0)
            assert reader.resets >= 1  # it noticed, and made a new consumer elsewhere
    finally:
        await nc.close()
    records = first + rest
    assert [r.seq for r in records] == list(range(1, 201))  # no gap, nothing twice
    assert [r.event.sid for r in records if isinstance(r.event, LeaveRequested)] == [
        f"r{i}" for i in range(200)
    ]
