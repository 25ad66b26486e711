"""Faults that took a whole deployment down, each reproduced against real processes.

Each test names the fault it guards against (the hardening issue's items 1, 3, 5, 10, 11):
a real nats-server killed with SIGKILL and restarted on the same store, a statekeeper
process killed and restarted, SDK clients and raw sockets on a real edge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest
from websockets.asyncio.client import connect

from roomlog.log import RoomLog
from schemas import subjects
from schemas.api import EdgeGone
from schemas.client import (
    Ack,
    Error,
    Join,
    JoinAccepted,
    PublishTrack,
    UnpublishTrack,
)
from schemas.clock import now_ms
from schemas.codec import decode, encode
from schemas.errors import ErrorCode
from schemas.log import JoinRequested, LeaveRequested
from stagecast.client import ConnectionState
from stagecast.errors import RoomNotFound, Unavailable
from tests.edge_fixtures import Client
from tests.fault_fixtures import FaultStack, Partition, fault_stack
from tests.polling import eventually
from tests.stack_fixtures import Events

pytestmark = pytest.mark.slow

ROOM = "faults"


async def test_nats_outage_of_6_s_removes_nobody_and_healthz_says_not_ready(
    tmp_path: Path,
) -> None:
    """Item 1: the statekeeper judged edges while its own NATS link was down, so every
    session entered its grace and was removed once NATS came back, sockets still open."""
    async with fault_stack(tmp_path) as stack:
        await stack.api.create_room(ROOM, departure_timeout=3)
        alice = await stack.join(stack.token("alice", ROOM))
        bob = await stack.join(stack.token("bob", ROOM))
        seen = Events(alice, "participant-left", "reconnecting")
        assert await stack.identities(ROOM) == ["alice", "bob"]

        stack.nats.kill()
        await eventually(_not(stack.healthy), what="/healthz to say not ready")
        await asyncio.sleep(6.0)
        await stack.nats.start()
        await stack.wait_healthy()
        # Longer than the edge timeout (4 s) plus the room's grace (3 s): on the old code
        # both sessions were removed by now.
        await asyncio.sleep(9.0)
        assert await stack.identities(ROOM) == ["alice", "bob"]
        assert seen.of("participant-left") == []
        for room in (alice, bob):
            assert room.connection_state is ConnectionState.CONNECTED
        await bob.local_participant.set_metadata("still here")
        await eventually(
            lambda: alice.remote_participants["bob"].metadata == "still here",
            what="bob's metadata at alice",
        )


async def test_an_action_refused_during_a_nats_outage_never_lands_later(tmp_path: Path) -> None:
    """Item 3: nats-py buffered publishes while reconnecting, so an action the client was
    told failed was stored after NATS came back, undoing what was acknowledged since."""
    async with fault_stack(tmp_path) as stack:
        alice = await stack.join(stack.token("alice", ROOM))
        bob = await stack.join(stack.token("bob", ROOM))
        await bob.local_participant.set_metadata("v1")
        await eventually(lambda: alice.remote_participants["bob"].metadata == "v1", what="v1")

        stack.nats.kill()
        await asyncio.sleep(0.5)
        with pytest.raises(Unavailable):
            await bob.local_participant.set_metadata("stale")
        await stack.nats.start()
        await stack.wait_healthy()
        await asyncio.sleep(3.0)  # what was buffered would have landed by now
        page = await stack.api.list_participants(ROOM)
        assert {p.id: p.metadata for p in page.participants}["bob"] == "v1"
        assert alice.remote_participants["bob"].metadata == "v1"
        await bob.local_participant.set_metadata("v2")
        await eventually(lambda: alice.remote_participants["bob"].metadata == "v2", what="v2")


async def test_a_late_join_in_the_log_never_displaces_the_newer_session(tmp_path: Path) -> None:
    """Item 3: a stale join stored after the client had joined again (elsewhere) kicked the
    new session with DUPLICATE_IDENTITY."""
    async with fault_stack(tmp_path) as stack:
        alice = await stack.join(stack.token("alice", ROOM))
        observer = await stack.join(stack.token("observer", ROOM))
        seen = Events(observer, "participant-left")
        nc = await nats.connect(stack.nats.url)
        try:
            room_log = RoomLog(nc.jetstream())
            inbox = nc.new_inbox()
            replies = await nc.subscribe(inbox)
            await eventually(lambda: "alice" in observer.remote_participants, what="alice")
            joined_at = observer.remote_participants["alice"].joined_at
            stale = JoinRequested(
                room_id=ROOM,
                at=joined_at - 1_000,
                sid="PA_staleattempt01",
                participant_id="alice",
                edge_id="ED_gone",
                reply_to=inbox,
                req=7,
            )
            await room_log.append(stale, "stale-join")
            msg = await replies.next_msg(timeout=10)
        finally:
            await nc.close()
        reply = decode(msg.data)
        assert isinstance(reply, Error), reply
        assert reply.code in (ErrorCode.DUPLICATE_IDENTITY.value, ErrorCode.UNAVAILABLE.value)
        await alice.local_participant.set_metadata("not kicked")
        assert alice.connection_state is ConnectionState.CONNECTED
        assert seen.of("participant-left") == []


async def test_a_stale_ack_from_before_a_resume_never_answers_a_new_request(
    tmp_path: Path,
) -> None:
    """Item 5: request ids restart at 1 on each socket and replies were routed by session,
    so after a resume an old request's late `ack` answered a new request with that id."""
    async with fault_stack(tmp_path) as stack:
        first = Client(await connect(stack.ws_url))
        joined = await first.request(Join(id=1, token=stack.token("alice", ROOM)))
        assert isinstance(joined, JoinAccepted)
        published = await first.request(PublishTrack(id=2, kind="audio"))
        assert isinstance(published, Ack) and published.sid
        track = published.sid

        stack.kill_statekeeper()
        await first.send(UnpublishTrack(id=3, track_sid=track))  # stored, not folded yet
        await asyncio.sleep(0.3)
        first.ws.transport.abort()  # the socket drops before any answer

        second = Client(await connect(stack.ws_url))
        await second.send(Join(id=1, token="", resume=joined.resume_token))
        stack.start_statekeeper()
        resumed = await second.expect(JoinAccepted, timeout=60)
        assert resumed.resumed
        # The track is gone (request 3 of the first socket was folded): this socket's own
        # request 3 must get TRACK_NOT_FOUND, never the first socket's late ack.
        reply = await second.request(UnpublishTrack(id=3, track_sid=track))
        assert isinstance(reply, Error), reply
        assert reply.code == ErrorCode.TRACK_NOT_FOUND.value
        await first.close()
        await second.close()


async def test_a_join_retried_through_a_statekeeper_outage_shows_no_flap(tmp_path: Path) -> None:
    """Item 10: a join that timed out was withdrawn and retried, so the room saw
    join -> left -> join for the same client, and public events said so too."""
    async with fault_stack(tmp_path, join_timeout=1.5) as stack:
        observer = await stack.join(stack.token("observer", ROOM))
        seen = Events(observer, "participant-joined", "participant-left")
        stack.kill_statekeeper()
        joining = asyncio.create_task(stack.join(stack.token("late", ROOM)))
        await asyncio.sleep(5.0)  # several join attempts time out meanwhile
        assert not joining.done()
        stack.start_statekeeper()
        late = await asyncio.wait_for(joining, 60)
        assert late.connection_state is ConnectionState.CONNECTED
        await eventually(lambda: "late" in observer.remote_participants, what="late at observer")
        await asyncio.sleep(2.0)
        assert seen.ids("participant-joined") == ["late"]
        assert seen.of("participant-left") == []
        assert await stack.identities(ROOM) == ["late", "observer"]
        names = await _public_events(stack.nats.url, ROOM)
        assert names.count("participant_joined") == 2  # observer and late, once each
        assert "participant_left" not in names


async def test_a_session_the_server_dropped_is_told_and_the_sdk_joins_again(
    tmp_path: Path,
) -> None:
    """Item 1: a session removed while its socket stayed open got no disconnect frame, and
    the SDK answered every NOT_JOINED by doing nothing. Now it joins again (same identity),
    republishes its tracks and restores its subscriptions."""
    async with fault_stack(tmp_path) as stack:
        await stack.api.create_room(ROOM, departure_timeout=2)
        speaker = await stack.join(stack.token("speaker", ROOM))
        await speaker.local_participant.publish("audio")
        listener = await stack.join(stack.token("listener", ROOM), auto_subscribe=False)
        await eventually(lambda: "speaker" in listener.remote_participants, what="speaker")
        await eventually(
            lambda: listener.remote_participants["speaker"].track_publications, what="track"
        )
        await listener.remote_participants["speaker"].subscribe("audio")
        events = Events(listener, "reconnecting", "reconnected", "disconnected")
        old_sid = listener.local_participant.sid

        # Make the statekeeper believe the edge is gone: its sessions enter the grace and,
        # 2 s later, are removed while their sockets are open.
        nc = await nats.connect(stack.nats.url)
        try:
            gone = EdgeGone(edge_id=stack.edge_id, at=now_ms())
            await nc.publish(subjects.EDGE_HEARTBEAT, encode(gone))
            await nc.flush()
        finally:
            await nc.close()

        await eventually(lambda: events.of("reconnected"), timeout=30, what="listener rejoined")
        assert events.of("disconnected") == []
        assert listener.local_participant.id == "listener"
        assert listener.local_participant.sid != old_sid
        assert ("speaker", "audio") in listener._session.subscriptions
        await eventually(lambda: len(speaker.local_participant.publications) == 1, what="track")
        await eventually(
            lambda: (
                listener.remote_participants.get("speaker")
                and listener.remote_participants["speaker"].track_publications
            ),
            timeout=30,
            what="the speaker's republished track at the listener",
        )
        assert await stack.identities(ROOM) == ["listener", "speaker"]
        await listener.local_participant.set_metadata("back")


async def test_an_edge_cut_off_from_nats_briefly_gets_its_sessions_back_unseen(
    tmp_path: Path,
) -> None:
    """Item 1: an edge cut off alone (the statekeeper stayed connected) was taken for gone;
    its sessions entered their grace while their sockets stayed open. When its link is back
    the edge re-asserts them and nobody sees them leave."""
    async with fault_stack(tmp_path) as stack:
        await stack.api.create_room(ROOM, departure_timeout=8)
        partition = Partition(stack.nats.port)
        await partition.heal()
        async with stack.another_edge(partition.url) as (cut_url, _edge_id):
            observer = await stack.join(stack.token("observer", ROOM))
            seen = Events(observer, "participant-left")
            alice = await stack.join(stack.token("alice", ROOM), url=cut_url)
            events = Events(alice, "reconnecting", "reconnected", "disconnected")
            await eventually(lambda: "alice" in observer.remote_participants, what="alice")
            await partition.cut()
            await asyncio.sleep(6.5)  # > the 4 s edge timeout: EdgeLost, her grace runs
            await partition.heal()
            await asyncio.sleep(10.0)  # past the end of the grace she would have had
            assert seen.of("participant-left") == []
            assert events.log == []
            assert await stack.identities(ROOM) == ["alice", "observer"]
            await alice.local_participant.set_metadata("still here")
            await eventually(
                lambda: observer.remote_participants["alice"].metadata == "still here",
                what="alice's metadata at the observer",
            )


async def test_an_edge_cut_off_past_the_grace_tells_its_sockets_and_they_join_again(
    tmp_path: Path,
) -> None:
    """Item 1: sessions removed while their edge was cut off kept open sockets that nobody
    told; the disconnect sent to them was lost with the link."""
    async with fault_stack(tmp_path) as stack:
        await stack.api.create_room(ROOM, departure_timeout=2)
        partition = Partition(stack.nats.port)
        await partition.heal()
        async with stack.another_edge(partition.url) as (cut_url, _edge_id):
            alice = await stack.join(stack.token("alice", ROOM), url=cut_url)
            events = Events(alice, "reconnecting", "reconnected", "disconnected")
            await partition.cut()
            await eventually(lambda: _absent(stack, "alice"), timeout=30, what="alice removed")
            await partition.heal()
            await eventually(lambda: events.of("reconnected"), timeout=30, what="alice rejoined")
            assert events.of("disconnected") == []
            assert await stack.identities(ROOM) == ["alice"]
            assert alice.local_participant.id == "alice"


async def test_not_joined_makes_the_sdk_join_again_and_retry_the_request(tmp_path: Path) -> None:
    """Item 1: a session the server dropped without telling its socket answered NOT_JOINED
    to every request, for ever."""
    async with fault_stack(tmp_path) as stack:
        alice = await stack.join(stack.token("alice", ROOM))
        events = Events(alice, "reconnecting", "reconnected")
        nc = await nats.connect(stack.nats.url)
        try:
            room_log = RoomLog(nc.jetstream())
            gone = LeaveRequested(room_id=ROOM, at=now_ms(), sid=alice.local_participant.sid)
            await room_log.append(gone, "silent-removal")
        finally:
            await nc.close()
        await eventually(lambda: _absent(stack, "alice"), what="alice removed")
        await alice.local_participant.set_metadata("after")  # NOT_JOINED, rejoin, retried
        assert events.of("reconnected")
        page = await stack.api.list_participants(ROOM)
        assert {p.id: p.metadata for p in page.participants} == {"alice": "after"}


async def test_a_nats_outage_logs_one_line_per_change_not_one_per_attempt(tmp_path: Path) -> None:
    """Item 11: the statekeeper had no NATS error_cb, so nats-py logged a traceback for
    every reconnect attempt (about two a second)."""
    async with fault_stack(tmp_path) as stack:
        stack.nats.kill()
        await asyncio.sleep(6.0)
        await stack.nats.start()
        await stack.wait_healthy()
        await asyncio.sleep(1.0)
        text = stack.statekeeper_log.read_text(errors="replace")
        assert text.count("NATS link lost") == 1, text[-4000:]
        assert text.count("NATS link back") == 1, text[-4000:]
        assert text.count("reconnect failing") <= 1, text[-4000:]
        assert "Traceback" not in text, text[-4000:]


# --------------------------------------------------------------------------- helpers


def _not(check: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    async def negated() -> bool:
        return not await check()

    return negated


async def _absent(stack: FaultStack, identity: str) -> bool:
    try:
        return identity not in await stack.identities(ROOM)
    except RoomNotFound:
        return True


async def _public_events(nats_url: str, room_id: str) -> list[str]:
    """The names of every public event of `room_id` in `STAGECAST_EVENTS`, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subjects.room_events(room_id), ordered_consumer=True)
        names: list[str] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                return names
            names.append(msg.subject.rsplit(".", 1)[-1])
    finally:
        await nc.close()
