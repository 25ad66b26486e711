"""A reply the statekeeper sent but the edge never got is asked for again (`edge.awaited`).

Core NATS keeps nothing: a reply published while a NATS link is down is lost (the node a
statekeeper was connected to killed just after its fold, as in
tests/test_write_across_election.py). The record first, with a stand-in for the question;
then a real nats-server, a statekeeper shell whose link loses one reply on purpose, and an
edge: the client still gets its reply, exactly once, which the edge asked the statekeeper
for; and the statekeeper tells an edge that asks too early to ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from edge.awaited import AwaitedOutcomes
from edge.config import EdgeConfig
from edge.main import running_edge
from edge.metrics import sample_value
from roomlog.log import RoomLog
from roomlog.seam import Unsubscribable
from schemas.api import OUTCOME_FRAME_BYTES, ActionOutcome, ActionOutcomeRequest, RoomReply
from schemas.client import Ack, Error, SetMetadata
from schemas.codec import Message, decode, encode
from stagecast.server_api import RoomService
from statekeeper.queries import Queries
from statekeeper.recent import RecentReplies
from statekeeper.service import Statekeeper
from statekeeper.store import MemoryStore
from tests.edge_fixtures import API_KEY, API_SECRET, FAST, ROOM, Client, Stack
from tests.polling import eventually

WAIT = 0.05
"""The record's wait before asking, in these tests (the edge's is `OUTCOME_WAIT`)."""


# --------------------------------------------------------------------------- the records


def test_the_statekeeper_keeps_each_reply_for_its_subject_and_forgets_the_oldest() -> None:
    recent = RecentReplies(limit=2)
    recent.kept(5, "sess.a", b"ack-5")
    recent.kept(6, "sess.b", b"ack-6")
    assert recent.reply(5, "sess.a") == b"ack-5"
    assert recent.reply(5, "sess.b") is None  # only where it went
    recent.kept(7, "sess.a", b"ack-7")
    assert len(recent) == 2
    assert recent.reply(5, "sess.a") is None
    assert recent.reply(7, "sess.a") == b"ack-7"
    with pytest.raises(ValueError):
        RecentReplies(limit=0)


def test_the_kept_replies_are_bounded_by_bytes_and_one_too_big_to_send_is_not_kept() -> None:
    recent = RecentReplies(limit=100, max_bytes=10)
    recent.kept(1, "_INBOX.a", b"12345")
    recent.kept(2, "_INBOX.b", b"123456")  # 11 bytes in all: the oldest goes
    assert recent.reply(1, "_INBOX.a") is None
    assert recent.reply(2, "_INBOX.b") == b"123456"
    assert recent.size == 6
    recent.kept(3, "_INBOX.c", b"x" * 11)  # more than the whole budget: not kept
    assert recent.reply(3, "_INBOX.c") is None
    assert len(recent) == 1 and recent.size == 6
    big = RecentReplies()
    big.kept(4, "_INBOX.d", b"x" * (OUTCOME_FRAME_BYTES + 1))  # no answer could carry it
    assert big.reply(4, "_INBOX.d") is None and big.size == 0


class Asked:
    """A stand-in statekeeper: answers each question with the next of `answers`."""

    def __init__(self, *answers: ActionOutcome | None) -> None:
        self.answers = list(answers)
        self.asked: list[int] = []
        self.delivered: list[bytes] = []
        self.passed: list[bool] = []
        """What the session's `replied` said of each delivered frame, as it goes out."""
        self.outcomes: AwaitedOutcomes | None = None
        self.done = asyncio.Event()

    async def ask(self, seq: int) -> ActionOutcome | None:
        self.asked.append(seq)
        if not self.answers:
            self.done.set()
            return None
        return self.answers.pop(0)

    def deliver(self, frame: bytes) -> None:
        """As the session does: the recovered frame goes through `replied` on its way out."""
        self.delivered.append(frame)
        if self.outcomes is not None:
            message = decode(frame)
            assert isinstance(message, (Ack, Error)) and message.id is not None
            self.passed.append(self.outcomes.replied(message.id, frame))
        self.done.set()


def awaited(asked: Asked, *, patience: float = 5.0, limit: int = 8) -> AwaitedOutcomes:
    outcomes = AwaitedOutcomes(asked.ask, asked.deliver, wait=WAIT, patience=patience, limit=limit)
    asked.outcomes = outcomes
    return outcomes


async def test_a_reply_that_does_not_come_is_asked_for_until_it_is_folded_and_sent_once() -> None:
    ack = encode(Ack(id=3))
    asked = Asked(ActionOutcome(folded=False), None, ActionOutcome(folded=True, frame=ack))
    outcomes = awaited(asked)
    outcomes.appended(3, 41)
    await asyncio.wait_for(asked.done.wait(), 5)
    assert asked.asked == [41, 41, 41]  # not folded yet, no answer, then the reply
    assert asked.delivered == [ack]
    assert len(outcomes) == 0
    assert asked.passed == [True]  # the recovered copy went out
    assert not outcomes.replied(3, ack)  # the original, arriving late, is dropped
    assert outcomes.replied(3, encode(Error(id=3, code="UNAVAILABLE")))  # another reply is not


async def test_a_reply_that_comes_in_time_is_not_asked_for() -> None:
    asked = Asked(ActionOutcome(folded=True, frame=encode(Ack(id=1))))
    outcomes = awaited(asked)
    outcomes.appended(1, 7)
    assert outcomes.replied(1, encode(Ack(id=1)))
    outcomes.appended(2, 8)
    outcomes.stop()  # the socket closes
    outcomes.appended(3, 9)
    await asyncio.sleep(WAIT * 4)
    assert asked.asked == []
    assert len(outcomes) == 0


async def test_asking_stops_at_the_patience_and_the_record_is_bounded() -> None:
    asked = Asked()  # never an answer
    outcomes = awaited(asked, patience=WAIT * 3, limit=2)
    for req in range(4):
        outcomes.appended(req, 100 + req)
    assert len(outcomes) == 2  # the oldest were given up
    await eventually(lambda: len(outcomes) == 0, timeout=5, what="the waits given up")
    assert set(asked.asked) == {102, 103}
    asked.asked.clear()
    await asyncio.sleep(WAIT * 4)
    assert asked.asked == []
    with pytest.raises(ValueError):
        AwaitedOutcomes(asked.ask, asked.deliver, wait=1.0, patience=0.5)


# --------------------------------------------------------------------------- a real stack


class LossyLink:
    """The statekeeper's core NATS link, losing the replies to the request ids in `lose`
    (once each), as a link that broke just after the fold would."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.lose: set[int] = set()
        self.lose_api: set[type[Message]] = set()
        """Server API reply types to lose (the next reply of each to an inbox, once)."""
        self.lost: list[Message] = []

    @property
    def is_connected(self) -> bool:
        return self.nc.is_connected

    async def publish(self, subject: str, payload: bytes = b"") -> None:
        if self.lose and subject.startswith("stagecast.sess."):
            message = decode(payload)
            if isinstance(message, (Ack, Error)) and message.id in self.lose:
                self.lose.discard(message.id)
                self.lost.append(message)
                return
        if self.lose_api and not subject.startswith("stagecast."):  # an API caller's inbox
            message = decode(payload)
            if type(message) in self.lose_api:
                self.lose_api.discard(type(message))
                self.lost.append(message)
                return
        await self.nc.publish(subject, payload)

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> Unsubscribable:
        return await self.nc.subscribe(subject, queue=queue, cb=cb)


@contextlib.asynccontextmanager
async def lossy_stack(
    nc: NATS, nats_url: str
) -> AsyncIterator[tuple[Stack, LossyLink, Statekeeper]]:
    """A statekeeper shell on `LossyLink` (its read API too) and an edge, on one server."""
    room_log = RoomLog(nc.jetstream())
    await room_log.ensure()
    link = LossyLink(nc)
    keeper = Statekeeper(link, room_log, MemoryStore(), tuning=FAST)
    await keeper.start()
    queries = Queries(keeper, API_SECRET.encode())
    await queries.start()
    try:
        await keeper.wait_caught_up()
        config = EdgeConfig(nats_url=nats_url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        async with running_edge(config) as url:
            stack = Stack(nats=None, url=url, config=config)  # type: ignore[arg-type]
            try:
                yield stack, link, keeper
            finally:
                await stack.close_clients()
    finally:
        await queries.stop()
        await keeper.stop()


async def set_metadata(client: Client, value: str) -> int:
    req = client.next_id()
    await client.send(SetMetadata(id=req, metadata=value))
    return req


async def test_a_reply_lost_on_the_statekeepers_link_reaches_the_client_once(
    nc: NATS, nats_url: str
) -> None:
    async with lossy_stack(nc, nats_url) as (stack, link, _keeper):
        client = await stack.join("alice")
        first = await set_metadata(client, "before")
        assert await client.reply(first) == Ack(id=first)
        lost = client.next_id()
        link.lose.add(lost)
        await client.send(SetMetadata(id=lost, metadata="lost"))
        # The statekeeper folded it and its reply was lost on the way: the edge asks.
        assert await client.reply(lost) == Ack(id=lost)
        assert link.lost == [Ack(id=lost)]
        after = await set_metadata(client, "after")
        assert await client.reply(after) == Ack(id=after)
        await client.sync()
        assert [m.id for m in client.of(Ack)] == [first, lost, after]  # each once
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            metrics = (await http.get("/metrics")).text
        assert sample_value(metrics, "stagecast_edge_replies_recovered_total") == 1, metrics
        assert sample_value(metrics, "stagecast_edge_reply_copies_dropped_total") == 0, metrics


async def test_the_statekeeper_answers_for_what_it_folded_to_where_the_reply_went(
    nc: NATS, nats_url: str
) -> None:
    async with lossy_stack(nc, nats_url) as (stack, _link, keeper):
        client = await stack.join("bob")
        replies: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            await replies.put(msg)

        sub = await nc.subscribe("stagecast.sess.>", cb=on_reply)
        await nc.flush()
        req = await set_metadata(client, "folded")
        assert await client.reply(req) == Ack(id=req)
        sent = await asyncio.wait_for(replies.get(), 5)
        await sub.unsubscribe()
        folded = keeper.applied_seq

        async def ask(seq: int, reply_to: str) -> ActionOutcome:
            request = ActionOutcomeRequest(room_id=ROOM, seq=seq, reply_to=reply_to)
            reply = await nc.request("stagecast.sk.api", encode(request), timeout=5)
            answer = decode(reply.data)
            assert isinstance(answer, ActionOutcome), answer
            return answer

        assert await ask(folded, sent.subject) == ActionOutcome(folded=True, frame=sent.data)
        assert await ask(folded + 100, sent.subject) == ActionOutcome(folded=False)
        # Asked for with another subject: what went to one session goes nowhere else.
        assert await ask(folded, sent.subject + "x") == ActionOutcome(folded=True)


async def test_a_server_api_reply_lost_on_the_statekeepers_link_is_asked_for(
    nc: NATS, nats_url: str
) -> None:
    async with lossy_stack(nc, nats_url) as (stack, link, keeper):
        async with RoomService(stack.url, API_KEY, API_SECRET) as api:
            link.lose_api.add(RoomReply)
            room = await api.create_room("lost-reply-room", metadata="m1")
            # folded once, its reply lost, and the statekeeper's copy sent by the edge
            assert room.id == "lost-reply-room" and room.metadata == "m1"
            assert [type(m) for m in link.lost] == [RoomReply]
            assert "lost-reply-room" in keeper.state.rooms
            # the next call is answered as usual, and a join's answer is not kept
            updated = await api.update_room_metadata("lost-reply-room", "m2")
            assert updated is not None and updated.metadata == "m2"
            await stack.join("carol")
            kept = len(keeper.recent)
            await stack.join("dave")
            assert len(keeper.recent) == kept
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            metrics = (await http.get("/metrics")).text
        assert sample_value(metrics, "stagecast_edge_replies_recovered_total") == 1, metrics
