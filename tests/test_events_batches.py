"""Public events as JetStream fast batches (`RoomLog.publish_event_batch`) on a real server.

Each event must land as `publish_event` would store it (subject, payload, ``Nats-Msg-Id``),
once, in order, with a few acks per batch instead of one per event; a stream that takes no
fast batches still gets every event. What every room log does with a batch (the twin too)
is in `tests/test_roomlog_contract.py`; across a statekeeper's kill and replay, in
`tests/test_statekeeper.py`.
"""

from __future__ import annotations

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from roomlog.jetstream import MSG_ID
from roomlog.log import RoomLog
from schemas import subjects
from schemas.codec import encode
from schemas.events import RoomStarted
from schemas.models import RoomInfo
from statekeeper.persistence import is_refusal

Event = tuple[str, str, RoomStarted, str]


def events(first: int, count: int, *, metadata: str = "") -> list[Event]:
    """`(room_id, name, message, event_id)` as the statekeeper publishes them."""
    out: list[Event] = []
    for n in range(first, first + count):
        room = RoomInfo(id=f"room-{n % 7}", sid="RM_1", metadata=metadata)
        out.append((room.id, "room_started", RoomStarted(id=f"{n}.rs", at=n, room=room), f"{n}.rs"))
    return out


@pytest.fixture
async def room_log(js: JetStreamContext) -> RoomLog:
    log = RoomLog(js, ack_timeout=2.0)
    await log.ensure()
    return log


async def stored(js: JetStreamContext) -> list[tuple[str | None, bytes | None, str | None]]:
    """Every message of the events stream: (subject, payload, Nats-Msg-Id), in order."""
    count = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
    out = []
    for seq in range(1, count + 1):
        msg = await js.get_msg(subjects.EVENTS_STREAM, seq)
        out.append((msg.subject, msg.data, (msg.headers or {}).get(MSG_ID)))
    return out


def as_published(batch: list[Event]) -> list[tuple[str | None, bytes | None, str | None]]:
    return [(subjects.public_event(r, n), encode(m), i) for r, n, m, i in batch]


async def test_the_events_stream_takes_fast_batches(js: JetStreamContext) -> None:
    await RoomLog(js).ensure()
    assert (await js.stream_info(subjects.EVENTS_STREAM)).config.allow_batched is True


async def test_a_batch_without_the_stream_fails_loudly(js: JetStreamContext) -> None:
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await RoomLog(js, ack_timeout=1.0).publish_event_batch(events(1, 3))


async def test_a_batch_lands_once_each_in_order_with_a_few_acks(
    room_log: RoomLog, js: JetStreamContext, nc: NATS
) -> None:
    batch = events(1, 1500)
    before = nc.stats["in_msgs"]
    assert await room_log.publish_event_batch(batch) == 1500
    answers = nc.stats["in_msgs"] - before
    assert room_log.fast_batches
    # One answer to the first event, a flow ack per 500 at most, the commit's pub ack.
    assert answers <= 6, f"{answers} answers for 1500 events"
    assert await stored(js) == as_published(batch)


async def test_a_batch_published_again_stores_only_what_is_new(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    await room_log.publish_event_batch(events(1, 600))
    # A statekeeper restarted from an older checkpoint publishes the same ids again.
    assert await room_log.publish_event_batch(events(1, 700)) == 700
    assert await room_log.publish_event_batch(events(100, 50)) == 0
    assert await stored(js) == as_published(events(1, 700))


async def test_a_stream_without_fast_batches_still_gets_every_event(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    config = room_log.events_stream_config()
    config.allow_batched = False  # an operator's edit, or a server before 2.14
    await js.update_stream(config)
    batch = events(1, 40)
    assert await room_log.publish_event_batch(batch) == 40
    assert not room_log.fast_batches  # told once, then every batch goes the ordinary way
    assert await room_log.publish_event_batch(events(1, 45)) == 45
    assert await stored(js) == as_published(events(1, 45))


async def test_an_event_the_stream_refuses_ends_the_batch_there(
    room_log: RoomLog, js: JetStreamContext
) -> None:
    config = room_log.events_stream_config()
    config.max_msg_size = 400
    await js.update_stream(config)
    batch = events(1, 30) + events(31, 1, metadata="x" * 500) + events(32, 30)
    with pytest.raises(nats.js.errors.APIError) as caught:
        await room_log.publish_event_batch(batch)
    assert caught.value.err_code == 10054  # message size exceeds maximum allowed
    assert is_refusal(caught.value)  # the statekeeper sets that one event aside
    assert await stored(js) == as_published(batch[:30])
    # The rest, published again without it, lands after the events already stored.
    assert await room_log.publish_event_batch(batch[:30] + batch[31:]) == 60
    assert await stored(js) == as_published(batch[:30] + batch[31:])
