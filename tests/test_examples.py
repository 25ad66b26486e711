"""The large-room design's examples, end to end: the SDK against a real stack.

Each test starts a private nats-server, a statekeeper on SQLite and an edge
(`tests.stack_fixtures`), joins with `stagecast.join` and checks what the design promises:
speakers are individually tracked (lazily and retroactively), viewers only move a coalesced
count and are reached by paginated pulls.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import AudioStreamTrack, VideoStreamTrack

import stagecast
from schemas.client import Subscribe
from schemas.models import Grant
from stagecast import errors
from stagecast.client import ConnectionState, ConnectOptions, ParticipantCounts, Room, StreamEvent
from tests.stack_fixtures import (
    AUDIENCE,
    HOST,
    SPEAKER,
    WAIT,
    AudienceThread,
    Events,
    Stack,
    eventually,
    sdk_stack,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, forwarders=1) as running:
        yield running


WEBINAR = "webinar-2026-05"
JITTER = 0.1
"""Seconds of delivery jitter allowed when checking the 250 ms count window on arrival."""


def counts_of(room: Room) -> tuple[int, int, int]:
    c = room.counts
    return c.speaker, c.viewer, c.total


# --------------------------------------------------------------------------- example 1


async def test_small_meeting_everyone_on_stage(stack: Stack) -> None:
    """Subscribe in response to publish: one handler covers retroactive and live streams."""
    alice = await stack.join(stack.token("alice", "standup"), name="Alice")
    bob = await stack.join(stack.token("bob", "standup"))
    camera, microphone = VideoStreamTrack(), AudioStreamTrack()  # real aiortc tracks
    video = await alice.local_participant.publish(camera)
    audio = await alice.local_participant.publish(microphone)
    assert (video.kind, video.source, audio.kind, audio.source) == (
        "video",
        "camera",
        "audio",
        "microphone",
    )

    carol = await stack.join(stack.token("carol", "standup"))
    subscribed: list[tuple[str, str]] = []
    published: list[tuple[str, StreamEvent]] = []

    async def subscribe(p: stagecast.RemoteParticipant, ev: StreamEvent) -> None:
        published.append((p.id, ev))
        await p.subscribe(ev.kind)
        subscribed.append((p.id, ev.kind))

    def on_joined(p: stagecast.RemoteParticipant) -> None:
        p.on("stream-published", lambda ev: subscribe(p, ev))

    carol.on("participant-joined", on_joined)  # alice and bob are replayed at once
    assert set(carol.remote_participants) == {"alice", "bob"}
    await eventually(
        lambda: sorted(subscribed) == [("alice", "audio"), ("alice", "video")],
        what="carol subscribed to alice's streams",
        timeout=WAIT,
    )
    assert carol.remote_participants["alice"].name == "Alice"
    await bob.local_participant.publish("audio")  # live, after carol's handler
    await eventually(
        lambda: ("bob", "audio") in subscribed, what="carol subscribed to bob", timeout=WAIT
    )
    # a speaker joining later fires the same handler
    dave = await stack.join(stack.token("dave", "standup"))
    await dave.local_participant.publish("video", source="screen_share")
    await eventually(lambda: ("dave", "video") in subscribed, what="dave's screen", timeout=WAIT)
    screen = next(ev for pid, ev in published if pid == "dave")
    assert screen.source == "screen_share"
    # unpublishing reaches everyone as stream-unpublished
    gone: list[StreamEvent] = []
    carol.remote_participants["alice"].on("stream-unpublished", gone.append)
    await alice.local_participant.unpublish("audio")
    await alice.local_participant.unpublish(video)
    await eventually(lambda: len(gone) == 2, what="stream-unpublished", timeout=WAIT)
    assert {ev.kind for ev in gone} == {"audio", "video"}
    assert carol.remote_participants["alice"].tracks == {}
    with pytest.raises(errors.NotPublished):
        await alice.local_participant.unpublish("video")
    camera.stop()
    microphone.stop()
    await eventually(lambda: counts_of(carol) == (4, 0, 4), what="counts", timeout=WAIT)


# --------------------------------------------------------------------------- example 2


async def test_webinar_shared_audience_token(stack: Stack) -> None:
    host_token = stack.token("host-1", WEBINAR, name="Host", grant=HOST)
    panelist_token = stack.token("panelist-jane", WEBINAR)
    audience_token = stack.token(None, WEBINAR, viewer=True)  # one token for every viewer

    host = await stack.join(host_token)
    host_events = Events(host, "participant-joined", "participant-count-changed")
    await stack.join(panelist_token)
    viewers = await stack.join_many([audience_token] * 12)

    ids = {v.local_participant.id for v in viewers}
    assert len(ids) == 12, "each session of the shared token gets its own participant id"
    assert all(v.local_participant.is_viewer for v in viewers)
    for viewer in viewers:
        seen = Events(viewer, "participant-joined")
        assert sorted(seen.ids("participant-joined")) == ["host-1", "panelist-jane"]
        assert set(viewer.remote_participants) == {"host-1", "panelist-jane"}
    await eventually(lambda: counts_of(host) == (2, 12, 14), what="host counts", timeout=WAIT)
    assert host_events.ids("participant-joined") == ["panelist-jane"]
    assert set(host.remote_participants) == {"panelist-jane"}
    last = host_events.of("participant-count-changed")[-1]
    assert (last.speaker, last.viewer, last.total) == (2, 12, 14)
    with pytest.raises(errors.InvalidPermissions):
        await viewers[0].local_participant.publish("video")


# --------------------------------------------------------------------------- example 3


async def test_domain_wide_audience_token_joins_a_named_room(stack: Stack) -> None:
    audience = stack.token(None, None, viewer=True, name="Attendee")  # no room, no id
    host = await stack.join(stack.token("host", "town-hall-2026-q3", grant=HOST))
    with pytest.raises(errors.BadRequest):
        await stack.join(audience)  # a roomless token needs room_id
    viewers = await asyncio.gather(
        *(stack.join(audience, room_id="town-hall-2026-q3") for _ in range(8))
    )
    assert len({v.local_participant.id for v in viewers}) == 8
    assert all(v.id == "town-hall-2026-q3" for v in viewers)
    assert all(set(v.remote_participants) == {"host"} for v in viewers)
    await eventually(lambda: counts_of(host) == (1, 8, 9), what="counts", timeout=WAIT)
    # the same token works for another room too
    other = await stack.join(audience, room_id="another-room")
    assert other.id == "another-room"
    # a roomed token cannot be pointed at another room
    with pytest.raises(errors.InvalidPermissions):
        await stack.join(stack.token("x", "town-hall-2026-q3"), room_id="elsewhere")


# --------------------------------------------------------------------------- examples 4 and 5


async def _audience(stack: Stack, room: str, n: int) -> list[Room]:
    token = stack.token(None, room, viewer=True)
    joined: list[Room] = []
    for start in range(0, n, 50):
        joined += await stack.join_many([token] * min(50, n - start))
    return joined


async def test_host_pages_through_the_audience(stack: Stack) -> None:
    host = await stack.join(stack.token("host-1", WEBINAR, grant=HOST))
    await stack.join(stack.token("panelist-jane", WEBINAR))
    viewers = await _audience(stack, WEBINAR, 120)
    expected = {v.local_participant.id for v in viewers}
    await eventually(
        lambda: counts_of(host) == (2, 120, 122), what="all viewers counted", timeout=WAIT
    )

    async def first_total() -> int:
        return (await host.get_participants(tier="viewer", limit=1)).total

    deadline = asyncio.get_running_loop().time() + WAIT
    while await first_total() != 120:  # the roster reaches SQL a moment after the fold
        assert asyncio.get_running_loop().time() < deadline, "viewer roster never complete"
        await asyncio.sleep(0.05)

    seen: list[str] = []
    pages: list[int] = []
    cursor: str | None = None
    while True:
        page = await host.get_participants(tier="viewer", limit=50, cursor=cursor)
        assert page.total == 120
        assert all(p.is_viewer for p in page.participants)
        pages.append(len(page.participants))
        seen += [p.id for p in page.participants]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [50, 50, 20]
    assert len(seen) == len(set(seen)), "no duplicates"
    assert set(seen) == expected
    # no filter: speakers first, then viewers
    everyone = await host.get_participants(limit=5)
    assert everyone.total == 122
    assert [p.is_viewer for p in everyone.participants[:2]] == [False, False]
    speakers = await host.get_participants(tier="speaker")
    assert {p.id for p in speakers.participants} == {"host-1", "panelist-jane"}
    assert speakers.next_cursor is None
    # speakers in a page are the tracked objects
    jane = next(p for p in speakers.participants if p.id == "panelist-jane")
    assert jane is host.remote_participants["panelist-jane"]


async def find_participant(room: Room, participant_id: str) -> stagecast.RemoteParticipant | None:
    """Example 5: the speaker map first (sync), then the paginated viewer scan."""
    speaker = room.remote_participants.get(participant_id)
    if speaker is not None:
        return speaker
    cursor: str | None = None
    while True:
        page = await room.get_participants(tier="viewer", limit=100, cursor=cursor)
        found = next((p for p in page.participants if p.id == participant_id), None)
        if found is not None:
            return found
        cursor = page.next_cursor
        if cursor is None:
            return None


async def test_find_a_participant_by_id(stack: Stack) -> None:
    host = await stack.join(stack.token("host-1", WEBINAR, grant=HOST))
    await stack.join(stack.token("panelist-jane", WEBINAR))
    viewers = await _audience(stack, WEBINAR, 150)
    target = viewers[137].local_participant.id
    await eventually(lambda: counts_of(host) == (2, 150, 152), what="counts", timeout=WAIT)

    jane = await find_participant(host, "panelist-jane")
    assert jane is host.remote_participants["panelist-jane"]
    found = await eventually_found(host, target)
    assert found.is_viewer and found.id == target
    assert target not in host.remote_participants  # transient, never tracked
    with pytest.raises(errors.InvalidPermissions):
        await found.subscribe("video")
    assert await find_participant(host, "nobody") is None


async def eventually_found(room: Room, participant_id: str) -> stagecast.RemoteParticipant:
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        found = await find_participant(room, participant_id)
        if found is not None:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{participant_id} never found"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- tiers at scale


async def test_tier_scaling_five_speakers_two_hundred_viewers(stack: Stack) -> None:
    room = "broadcast"
    audience = stack.token(None, room, viewer=True)
    speaker_tokens = [stack.token(f"speaker-{i}", room) for i in range(5)]
    recorders: dict[int, Events] = {}
    started = asyncio.get_running_loop().time()

    async def viewer() -> Room:
        joined = await stack.join(audience)
        recorders[id(joined)] = Events(joined, "participant-joined", "participant-count-changed")
        return joined

    results = await asyncio.gather(
        *(viewer() for _ in range(200)), *(stack.join(t) for t in speaker_tokens)
    )
    viewers, speakers = list(results[:200]), list(results[200:])
    for s in speakers:
        recorders[id(s)] = Events(s, "participant-joined", "participant-count-changed")
    everyone = viewers + speakers
    await eventually(
        lambda: all(counts_of(r) == (5, 200, 205) for r in everyone),
        what="exact final counts on every client",
        timeout=30.0,
    )
    elapsed = asyncio.get_running_loop().time() - started
    for v in viewers:
        joined_ids = recorders[id(v)].ids("participant-joined")
        assert sorted(joined_ids) == [f"speaker-{i}" for i in range(5)], joined_ids
        count_events = len(recorders[id(v)].of("participant-count-changed"))
        # coalesced: about one per 250 ms window, far fewer than the 205 joins
        assert count_events <= math.ceil(elapsed / 0.24) + 1, (count_events, elapsed)
        # a viewer holds the five speakers and nothing per viewer
        assert len(v.remote_participants) == 5
    for s in speakers:
        assert len(s.remote_participants) == 4


async def test_count_updates_are_coalesced(stack: Stack) -> None:
    room = "burst"
    observers = [await stack.join(stack.token(f"obs-{i}", room)) for i in range(3)]
    observer_events = [Events(o, "participant-count-changed") for o in observers]
    audience = stack.token(None, room, viewer=True)
    crowd = AudienceThread(stack.url)  # the joins' work stays off this loop
    try:
        for _ in range(3):  # three bursts, so several windows are exercised
            await crowd.join(audience, 30)
        await eventually(
            lambda: all(counts_of(o) == (3, 90, 93) for o in observers),
            what="final counts",
            timeout=WAIT,
        )
        for events in observer_events:
            times = events.times("participant-count-changed")
            assert times, "at least one count update"
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # The statekeeper sends at most one update per 250 ms window (measured: every
            # send gap >= 250 ms). The first update of a burst leaves while the edge is
            # busiest, so it can arrive late and the next one on time: arrival gaps shrink
            # by up to ~80 ms here (edge, statekeeper and clients share one process).
            assert all(gap >= 0.25 - JITTER for gap in gaps), gaps
            assert events.of("participant-count-changed")[-1] == ParticipantCounts(3, 90, 93)
            assert len(times) < 90
    finally:
        await crowd.close()


# --------------------------------------------------------------------------- promotion


async def test_promotion_and_demotion(stack: Stack) -> None:
    room = "stage"
    host = await stack.join(stack.token("host", room, grant=HOST))
    guest = await stack.join(stack.token("guest", room, viewer=True))
    other_viewer = await stack.join(stack.token("watcher", room, viewer=True))
    host_events = Events(host, "participant-joined", "participant-left")
    watcher_events = Events(other_viewer, "participant-joined", "participant-left")
    guest_events = Events(guest, "tier-changed")
    await eventually(lambda: counts_of(host) == (1, 2, 3), what="counts", timeout=WAIT)
    with pytest.raises(errors.InvalidPermissions):
        await guest.local_participant.publish("audio")

    info = await stack.api.update_participant(room, "guest", is_viewer=False, grant=SPEAKER)
    assert not info.is_viewer
    await eventually(lambda: guest_events.of("tier-changed"), what="tier-changed", timeout=WAIT)
    assert not guest.local_participant.is_viewer
    assert guest.local_participant.grant.can_publish
    await eventually(lambda: "guest" in host.remote_participants, what="host sees guest")
    await eventually(lambda: "guest" in other_viewer.remote_participants, what="watcher sees")
    assert host_events.ids("participant-joined") == ["guest"]
    assert watcher_events.ids("participant-joined") == ["host", "guest"]  # host: replayed
    await eventually(lambda: counts_of(host) == (2, 1, 3), what="counts moved", timeout=WAIT)
    await guest.local_participant.publish("audio")  # allowed now
    await eventually(
        lambda: "audio" in host.remote_participants["guest"].tracks, what="track", timeout=WAIT
    )
    # the refreshed session token carries the new tier: a resumed session keeps it
    guest_lifecycle = Events(guest, "reconnected")
    assert guest._session.connection is not None
    guest._session.connection.abort()
    await eventually(lambda: guest_lifecycle.of("reconnected"), what="resumed", timeout=WAIT)
    assert not guest.local_participant.is_viewer
    await guest.local_participant.publish("video")

    await stack.api.update_participant(room, "guest", is_viewer=True, grant=AUDIENCE)
    await eventually(lambda: len(guest_events.of("tier-changed")) == 2, what="demoted")
    assert guest.local_participant.is_viewer
    assert guest.local_participant.publications == {}
    await eventually(lambda: "guest" not in host.remote_participants, what="host: guest left")
    await eventually(lambda: "guest" not in other_viewer.remote_participants, what="watcher")
    assert host_events.ids("participant-left") == ["guest"]
    await eventually(lambda: counts_of(host) == (1, 2, 3), what="counts back", timeout=WAIT)
    with pytest.raises(errors.InvalidPermissions):
        await guest.local_participant.publish("audio")


# --------------------------------------------------------------------------- session ends


async def test_remove_participant(stack: Stack) -> None:
    token = stack.token("troll", "moderated")
    host = await stack.join(stack.token("host", "moderated", grant=HOST))
    troll = await stack.join(token)
    troll_events = Events(troll, "disconnected")
    host_events = Events(host, "participant-left")
    await stack.api.remove_participant("moderated", "troll")
    await eventually(lambda: troll_events.of("disconnected"), what="disconnected", timeout=WAIT)
    assert troll_events.of("disconnected") == ["REMOVED"]
    assert troll.connection_state is ConnectionState.DISCONNECTED
    await eventually(lambda: host_events.ids("participant-left") == ["troll"], what="left")
    with pytest.raises(errors.StagecastError) as refused:
        await stack.join(token)
    assert refused.value.code == "INVALID_TOKEN"
    with pytest.raises(errors.InvalidStateError):
        await troll.local_participant.set_metadata("still here?")
    with pytest.raises(errors.ParticipantNotFound):
        await stack.api.remove_participant("moderated", "troll")


async def test_delete_room_disconnects_everyone(stack: Stack) -> None:
    await stack.api.create_room("doomed")
    rooms = [
        await stack.join(stack.token("a", "doomed")),
        await stack.join(stack.token("b", "doomed")),
        await stack.join(stack.token(None, "doomed", viewer=True)),
    ]
    events = [Events(r, "disconnected", "reconnecting") for r in rooms]
    await stack.api.delete_room("doomed")
    await eventually(
        lambda: all(e.of("disconnected") == ["ROOM_DELETED"] for e in events),
        what="everyone disconnected",
        timeout=WAIT,
    )
    assert all(not e.of("reconnecting") for e in events)
    assert "doomed" not in {r.id for r in await stack.api.list_rooms()}
    with pytest.raises(errors.RoomNotFound):
        await stack.api.delete_room("doomed")


async def test_duplicate_identity_replaces_the_old_session(stack: Stack) -> None:
    observer = await stack.join(stack.token("observer", "dup"))
    first = await stack.join(stack.token("alice", "dup"))
    first_events = Events(first, "disconnected")
    await eventually(lambda: "alice" in observer.remote_participants, what="first alice")
    old_sid = observer.remote_participants["alice"].sid
    second = await stack.join(stack.token("alice", "dup"))
    await eventually(lambda: first_events.of("disconnected"), what="old session ended")
    assert first_events.of("disconnected") == ["DUPLICATE_IDENTITY"]
    assert second.connection_state is ConnectionState.CONNECTED
    await eventually(
        lambda: (
            observer.remote_participants.get("alice") is not None
            and observer.remote_participants["alice"].sid == second.local_participant.sid
        ),
        what="observer tracks the new session",
    )
    assert observer.remote_participants["alice"].sid != old_sid
    await eventually(lambda: counts_of(observer) == (2, 0, 2), what="counts", timeout=WAIT)


async def test_room_full(stack: Stack) -> None:
    await stack.api.create_room("tiny", max_participants=2)
    await stack.join(stack.token("a", "tiny"))
    await stack.join(stack.token(None, "tiny", viewer=True))
    with pytest.raises(errors.RoomFull):
        await stack.join(stack.token("c", "tiny"))


# --------------------------------------------------------------------------- data


async def test_data_routing(stack: Stack) -> None:
    room = "chat"
    alice = await stack.join(stack.token("alice", room))
    bob = await stack.join(stack.token("bob", room))
    viewer = await stack.join(stack.token("v1", room, viewer=True))
    deaf = await stack.join(
        stack.token("deaf", room, grant=Grant(can_subscribe_data=False, can_publish_data=True))
    )
    got = {name: Events(r, "data-received") for name, r in
           {"alice": alice, "bob": bob, "v1": viewer, "deaf": deaf}.items()}  # fmt: skip

    await alice.local_participant.publish_data(b"hello", topic="chat")
    await eventually(lambda: got["bob"].of("data-received") and got["v1"].of("data-received"))
    message = got["bob"].of("data-received")[0]
    assert (message.payload, message.sender_id, message.topic, message.reliable) == (
        b"hello",
        "alice",
        "chat",
        True,
    )

    await alice.local_participant.publish_data(b"psst", reliable=False, destination_ids=["v1"])
    await eventually(lambda: len(got["v1"].of("data-received")) == 2, what="direct data")
    assert got["v1"].of("data-received")[1].reliable is False

    await stack.api.send_data(room, b"from the server", topic="ops")
    await eventually(lambda: len(got["alice"].of("data-received")) == 1, what="server data")
    server_message = got["alice"].of("data-received")[0]
    assert server_message.sender_id is None and server_message.topic == "ops"
    await eventually(lambda: len(got["bob"].of("data-received")) == 2, what="bob: server data")
    await eventually(lambda: len(got["v1"].of("data-received")) == 3, what="v1: server data")

    with pytest.raises(errors.InvalidPermissions):
        await viewer.local_participant.publish_data(b"viewers may not send")  # grant says no
    with pytest.raises(errors.PayloadTooLarge):
        await alice.local_participant.publish_data(b"x" * (16 * 1024))
    # a round trip on every client, then: alice never got her own, bob not the direct one
    await asyncio.gather(*(r.get_participants(limit=1) for r in (alice, bob, viewer, deaf)))
    assert len(got["bob"].of("data-received")) == 2
    assert got["deaf"].of("data-received") == []


# --------------------------------------------------------------------------- subscribe errors


async def test_subscribe_errors(stack: Stack) -> None:
    room = "subs"
    host = await stack.join(stack.token("host", room, grant=HOST))
    await stack.join(stack.token("quiet", room))
    await stack.join(stack.token("v1", room, viewer=True))
    await eventually(lambda: "quiet" in host.remote_participants, what="quiet")
    quiet = host.remote_participants["quiet"]
    with pytest.raises(errors.NotPublished):
        await quiet.subscribe("video")  # locally: nothing published
    with pytest.raises(errors.NotPublished):  # and the server says the same
        await host.request(Subscribe(id=0, participant_id="quiet", kind="video"))
    page = await host.get_participants(tier="viewer")
    v1 = next(p for p in page.participants if p.id == "v1")
    with pytest.raises(errors.InvalidPermissions):
        await v1.subscribe("audio")  # locally: a viewer has no media
    with pytest.raises(errors.InvalidPermissions):
        await host.request(Subscribe(id=0, participant_id="v1", kind="audio"))
    with pytest.raises(errors.ParticipantNotFound):
        await host.request(Subscribe(id=0, participant_id="ghost", kind="audio"))


# --------------------------------------------------------------------------- resume


async def test_resume_after_a_dropped_socket(stack: Stack) -> None:
    room = "flaky"
    await stack.api.create_room(room, departure_timeout=2)
    alice = await stack.join(stack.token("alice", room))
    bob = await stack.join(stack.token("bob", room))
    await alice.local_participant.publish("audio")
    alice_events = Events(alice, "reconnecting", "reconnected", "disconnected")
    bob_events = Events(bob, "participant-left", "participant-joined")
    sid = alice.local_participant.sid
    assert alice._session.connection is not None
    alice._session.connection.abort()  # the network drops; no close handshake
    await eventually(lambda: alice_events.of("reconnected"), what="reconnected", timeout=WAIT)
    assert alice_events.log[0][0] == "reconnecting"
    assert alice.connection_state is ConnectionState.CONNECTED
    assert alice.local_participant.sid == sid
    assert set(alice.remote_participants) == {"bob"}
    # the session works, and bob saw no departure
    await alice.local_participant.set_metadata("back")
    await eventually(
        lambda: bob.remote_participants["alice"].metadata == "back", what="metadata", timeout=WAIT
    )
    assert bob_events.ids("participant-joined") == ["alice"]  # the replay at registration
    assert bob_events.ids("participant-left") == []
    assert "audio" in bob.remote_participants["alice"].tracks
    assert bob.remote_participants["alice"].sid == sid
    # the departure grace of the dropped socket does not end the resumed session
    await asyncio.sleep(2.5)
    await alice.get_participants(limit=1)
    assert alice_events.of("disconnected") == []
    assert bob_events.ids("participant-left") == []
    assert "alice" in bob.remote_participants


async def test_server_shutdown_resumes_on_another_edge(stack: Stack) -> None:
    bob = await stack.join(stack.token("bob", "migrate"))
    async with stack.edge() as spare:
        doomed = stack.edge()
        first = await doomed.__aenter__()
        try:
            alice = await stack.join(stack.token("alice", "migrate"), url=[first, spare])
            alice_events = Events(alice, "reconnecting", "reconnected", "disconnected")
            bob_events = Events(bob, "participant-left")
            sid = alice.local_participant.sid
        finally:
            await doomed.__aexit__(None, None, None)  # disconnect SERVER_SHUTDOWN, close 4017
        await eventually(lambda: alice_events.of("reconnected"), what="resumed", timeout=WAIT)
        assert alice.local_participant.sid == sid
        assert alice_events.of("disconnected") == []
        await alice.local_participant.set_metadata("moved")
        await eventually(lambda: bob.remote_participants["alice"].metadata == "moved")
        assert bob_events.log == []
        await alice.leave()  # while the spare edge still runs


async def test_failover_between_edge_urls(stack: Stack) -> None:
    dead = "ws://127.0.0.1:9"  # the discard port: nothing listens
    room = await stack.join(stack.token("alice", "failover"), url=[dead, stack.url])
    assert room.connection_state is ConnectionState.CONNECTED
    with pytest.raises(errors.Unavailable):
        await stagecast.join(dead, stack.token("bob", "failover"))


# --------------------------------------------------------------------------- livestream


async def test_livestream_visibility(stack: Stack) -> None:
    room = "live"
    await stack.api.create_room(room, livestream=True)
    observer = await stack.join(stack.token("observer", room, metadata="watching"))
    observer_events = Events(observer, "participant-joined", "participant-left")
    shy_token = stack.token("shy", room)
    shy = await stack.join(shy_token)
    await eventually(lambda: counts_of(observer) == (2, 0, 2), what="counted", timeout=WAIT)
    assert "shy" not in observer.remote_participants  # a speaker with nothing is hidden
    assert "observer" in shy.remote_participants  # it has metadata: visible

    await shy.local_participant.set_attributes({"status": "ready"})
    await eventually(lambda: "shy" in observer.remote_participants, what="visible", timeout=WAIT)
    await shy.local_participant.set_attributes({"status": ""})  # cleared: stays visible
    await eventually(
        lambda: observer.remote_participants["shy"].attributes == {}, what="cleared", timeout=WAIT
    )
    assert observer_events.ids("participant-left") == []

    await shy.leave()
    await eventually(lambda: "shy" not in observer.remote_participants, what="left")
    again = await stack.join(shy_token)  # a new session starts hidden again
    await eventually(lambda: counts_of(observer) == (2, 0, 2), what="counted again")
    await observer.get_participants(limit=1)  # a round trip: anything broadcast has arrived
    assert "shy" not in observer.remote_participants
    assert observer_events.ids("participant-joined") == ["shy"]
    await again.local_participant.raise_hand()  # a hand is an attribute: visible again
    await eventually(lambda: "shy" in observer.remote_participants, what="hand makes visible")


async def test_hands_reach_moderators(stack: Stack) -> None:
    room = "qa"
    host = await stack.join(stack.token("host", room, grant=HOST))
    panelist = await stack.join(stack.token("panelist", room))
    viewer = await stack.join(stack.token("v1", room, viewer=True))
    host_events = Events(host, "hand-raised", "hand-lowered")
    panelist_events = Events(panelist, "hand-raised")
    await viewer.local_participant.raise_hand()
    assert viewer.local_participant.attributes == {"hand": "raised"}
    await eventually(lambda: host_events.ids("hand-raised") == ["v1"], what="hand", timeout=WAIT)
    assert host_events.of("hand-raised")[0].is_viewer
    # A host joining after the hand went up is told of it; both hosts hear the audience move.
    late = await stack.join(stack.token("late-host", room, grant=HOST))
    late_events = Events(late, "hand-raised", "audience-changed")
    await eventually(lambda: late_events.ids("hand-raised") == ["v1"], what="old hand")
    host_audience = Events(host, "audience-changed")
    second = await stack.join(stack.token("v2", room, viewer=True))
    await eventually(
        lambda: [c.viewer for c in host_audience.of("audience-changed")][-1:] == [2],
        what="audience-changed with 2 viewers",
        timeout=WAIT,
    )
    await eventually(lambda: late_events.of("audience-changed"), what="late host hears it")
    await second.leave()
    await viewer.local_participant.lower_hand()
    await eventually(lambda: host_events.ids("hand-lowered") == ["v1"], what="lowered")
    assert panelist_events.log == []
    assert "v1" not in host.remote_participants


# --------------------------------------------------------------------------- server API


async def test_server_api_round_trip(stack: Stack) -> None:
    room = "api"
    info = await stack.api.create_room(room, metadata="first", max_participants=10)
    assert (info.id, info.metadata, info.max_participants) == (room, "first", 10)
    alice = await stack.join(stack.token("alice", room))
    bob = await stack.join(stack.token("bob", room))
    bob_events = Events(bob, "room-metadata-changed")
    track = await alice.local_participant.publish("video")
    await eventually(lambda: "alice" in bob.remote_participants, what="alice")
    alice_view = bob.remote_participants["alice"]
    muted: list[Any] = []
    alice_view.on("track-muted", muted.append)

    await stack.api.mute_track(room, "alice", track.sid)
    await eventually(lambda: muted, what="track-muted", timeout=WAIT)
    await eventually(lambda: track.muted, what="alice sees her track muted", timeout=WAIT)
    unmuted: list[Any] = []
    alice_view.on("track-unmuted", unmuted.append)
    await track.unmute()
    await eventually(lambda: unmuted, what="track-unmuted", timeout=WAIT)
    assert not alice_view.tracks["video"].muted
    await stack.api.update_room_metadata(room, "second")
    await eventually(lambda: bob_events.of("room-metadata-changed") == ["second"], what="meta")
    assert bob.metadata == "second"

    updated = await stack.api.update_participant(room, "alice", metadata="m", attributes={"k": "v"})
    assert (updated.metadata, updated.attributes) == ("m", {"k": "v"})
    await eventually(lambda: alice_view.attributes == {"k": "v"}, what="attrs", timeout=WAIT)
    assert (await stack.api.get_participant(room, "alice")).metadata == "m"
    with pytest.raises(errors.ParticipantNotFound):
        await stack.api.get_participant(room, "nobody")
    page = await stack.api.list_participants(room)
    assert page.total == 2 and {p.id for p in page.participants} == {"alice", "bob"}
    listed = await stack.api.list_rooms([room])
    assert [r.id for r in listed] == [room]
    with pytest.raises(errors.InvalidToken):
        async with stagecast.RoomService(stack.url, "devkey", "wrong-secret-" + "y" * 32) as bad:
            await bad.list_rooms()


# --------------------------------------------------------------------------- timeouts


async def test_empty_and_departure_timeouts(stack: Stack) -> None:
    await stack.api.create_room("ephemeral", empty_timeout=1)
    assert "ephemeral" in {r.id for r in await stack.api.list_rooms()}

    async def room_ids() -> set[str]:
        return {r.id for r in await stack.api.list_rooms()}

    deadline = asyncio.get_running_loop().time() + WAIT
    while "ephemeral" in await room_ids():
        assert asyncio.get_running_loop().time() < deadline, "the empty room never closed"
        await asyncio.sleep(0.1)

    await stack.api.create_room("brief", departure_timeout=1)
    no_resume = ConnectOptions(reconnect_window=0.0)
    alice = await stack.join(stack.token("alice", "brief"), options=no_resume)
    bob = await stack.join(stack.token("bob", "brief"))
    alice_events = Events(alice, "disconnected")
    bob_events = Events(bob, "participant-left")
    assert alice._session.connection is not None
    alice._session.connection.abort()  # gone for good: the grace runs out
    await eventually(lambda: alice_events.of("disconnected"), what="alice gave up", timeout=WAIT)
    await eventually(lambda: bob_events.ids("participant-left") == ["alice"], what="grace over")
    await bob.leave()
    deadline = asyncio.get_running_loop().time() + WAIT
    while "brief" in await room_ids():  # the last one left: closed after departure_timeout
        assert asyncio.get_running_loop().time() < deadline, "the room never closed"
        await asyncio.sleep(0.1)
