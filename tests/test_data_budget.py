"""Data floods are bounded: viewers send no data by default, senders and rooms have byte
budgets (real nats-server, statekeeper, one or two edges, raw WebSocket clients)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from access.tokens import generate_token
from edge.config import EdgeConfig
from edge.main import running_edge
from edge.metrics import sample_value
from edge.ratelimit import DataLimits, TokenBucket
from schemas.client import Ack, DataReceived, Error, Join, JoinAccepted, PublishData, SetMetadata
from schemas.codec import encode
from schemas.models import Grant
from tests.edge_fixtures import API_KEY, API_SECRET, ROOM, Client, Stack, edge_stack

pytestmark = pytest.mark.timeout(60)

PAYLOAD = b"x" * 10_000
SPEAKER = Grant()


async def metric(stack: Stack, name: str) -> int:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        text = (await http.get("/metrics")).text
    value = sample_value(text, name)
    if value is None:
        raise AssertionError(f"no {name} in /metrics")
    return int(value)


async def flood(client: Client, count: int, payload: bytes = PAYLOAD) -> tuple[int, list[Error]]:
    """Send `count` data messages back to back; (how many were acked, the refusals)."""
    ids = [client.next_id() for _ in range(count)]
    for i in ids:
        await client.send(PublishData(id=i, payload=payload))
    acked, refused = 0, []
    for i in ids:
        reply = await client.reply(i)
        if isinstance(reply, Ack):
            acked += 1
        else:
            assert isinstance(reply, Error), reply
            refused.append(reply)
    return acked, refused


def received(client: Client, sender: str | None = None) -> list[DataReceived]:
    return [
        m
        for m in client.seen
        if isinstance(m, DataReceived) and (sender is None or m.sender_id == sender)
    ]


def frame_bytes(sender: Client, sender_id: str) -> int:
    """The size of the data frame the edge publishes for `sender`'s `PAYLOAD`."""
    assert sender.joined is not None
    frame = DataReceived(
        payload=PAYLOAD, sender_id=sender_id, sender_sid=sender.joined.participant.sid
    )
    return len(encode(frame))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with edge_stack(tmp_path) as running:
        yield running


async def test_viewer_token_minted_without_a_grant_cannot_publish_data(stack: Stack) -> None:
    token = generate_token(API_KEY, API_SECRET, room_id=ROOM, participant_id="v", is_viewer=True)
    viewer = await stack.connect()
    joined = await viewer.request(Join(id=viewer.next_id(), token=token))
    assert isinstance(joined, JoinAccepted) and not joined.grant.can_publish_data
    reply = await viewer.request(PublishData(id=viewer.next_id(), payload=b"spam"))
    assert isinstance(reply, Error) and reply.code == "INVALID_PERMISSIONS"


SENDER_BUDGET = {"data_bytes_per_s": 20_000, "data_burst_bytes": 40_000}


@pytest.fixture
async def budgeted(tmp_path: Path) -> AsyncIterator[Stack]:
    async with edge_stack(tmp_path, **SENDER_BUDGET) as running:
        yield running


async def test_data_flood_over_the_sender_budget_is_rate_limited_and_others_keep_working(
    budgeted: Stack,
) -> None:
    stack = budgeted
    watcher = await stack.join("watcher", viewer=True)
    bob = await stack.join("bob", grant=SPEAKER)
    flooder = await stack.join("flooder", grant=SPEAKER)
    frame = frame_bytes(flooder, "flooder")

    started = time.monotonic()
    acked, refused = await flood(flooder, 20)
    elapsed = time.monotonic() - started
    allowed = SENDER_BUDGET["data_burst_bytes"] + SENDER_BUDGET["data_bytes_per_s"] * elapsed
    assert 1 <= acked <= allowed // frame, (acked, elapsed)
    assert refused and all(e.code == "RATE_LIMITED" for e in refused)
    assert "data budget" in refused[0].message

    # Another sender's data and everyone's requests go through; the flooder stays connected.
    reply = await bob.request(PublishData(id=bob.next_id(), payload=b"hello"))
    assert isinstance(reply, Ack), reply
    await watcher.expect(DataReceived, lambda m: m.sender_id == "bob")
    reply = await flooder.request(SetMetadata(id=flooder.next_id(), metadata="still here"))
    assert isinstance(reply, Ack), reply
    await watcher.sync()
    assert len(received(watcher, "flooder")) == acked  # refused messages went nowhere
    assert await metric(stack, "stagecast_edge_data_sender_refusals_total") == len(refused)


ROOM_BUDGET = {
    "data_bytes_per_s": 1_000_000,
    "data_burst_bytes": 1_000_000,
    "room_data_bytes_per_s": 20_000,
    "room_data_burst_bytes": 40_000,
}


@contextlib.asynccontextmanager
async def second_edge(stack: Stack, **options: Any) -> AsyncIterator[Stack]:
    config = EdgeConfig(
        nats_url=stack.nats.url, api_key=API_KEY, api_secret=API_SECRET, port=0, **options
    )
    async with running_edge(config) as url:
        other = Stack(nats=stack.nats, url=url, config=config)
        try:
            yield other
        finally:
            await other.close_clients()


async def test_room_data_budget_holds_with_senders_on_two_edges(tmp_path: Path) -> None:
    async with (
        edge_stack(tmp_path, **ROOM_BUDGET) as one,
        second_edge(one, **ROOM_BUDGET) as two,
    ):
        watchers = [await one.join("w1", viewer=True), await two.join("w2", viewer=True)]
        senders = [await one.join("s1", grant=SPEAKER), await two.join("s2", grant=SPEAKER)]
        frame = frame_bytes(senders[0], "s1")
        assert frame_bytes(senders[1], "s2") == frame

        started = time.monotonic()
        results = await asyncio.gather(*(flood(s, 10) for s in senders))
        assert [acked for acked, _ in results] == [10, 10]  # within each sender's budget
        # Everyone is still served: a request round trip flushes what each was sent.
        for client in watchers + senders:
            reply = await client.request(SetMetadata(id=client.next_id(), metadata="m"))
            assert isinstance(reply, Ack), reply
        elapsed = time.monotonic() - started
        budget = ROOM_BUDGET["room_data_burst_bytes"]
        allowed = budget + ROOM_BUDGET["room_data_bytes_per_s"] * elapsed
        for watcher, sender, edge in zip(watchers, senders, (one, two), strict=True):
            got = len(received(watcher))
            assert budget // frame <= got and got * frame <= allowed, (got, elapsed)
            dropped = await metric(edge, "stagecast_edge_room_data_drops_total")
            assert dropped == 20 - got  # this edge kept the room's budget on its own
            delivered = await metric(edge, "stagecast_edge_data_bytes_out_total")
            assert delivered == frame * (got + len(received(sender)))


def test_byte_bucket_takes_the_frame_size_and_refuses_without_taking() -> None:
    now = [0.0]
    bucket = TokenBucket(1000, 3000, clock=lambda: now[0])
    assert bucket.take(2000) and not bucket.take(2000)
    assert bucket.tokens == 1000  # a refusal takes nothing
    now[0] = 1.0
    assert bucket.take(2000) and not bucket.take(1)


def test_data_budgets_must_fit_the_largest_data_frame() -> None:
    base = {"nats_url": "nats://x", "api_key": "k", "api_secret": "s"}
    assert DataLimits.of(EdgeConfig(**base)) == DataLimits()  # type: ignore[arg-type]
    for bad in ({"data_burst_bytes": 1000}, {"room_data_bytes_per_s": 0}):
        with pytest.raises(ValueError, match="data"):
            EdgeConfig(**base, **bad)  # type: ignore[arg-type]
