"""Media end to end: SDK clients publish and subscribe real aiortc tracks through the stack.

Every test runs a private nats-server, statekeeper, edge and forwarder(s) (in this
process, so the forwarders' state can be inspected), and SDK clients with real aiortc
peer connections: signaling goes client -> edge -> statekeeper (placement) -> forwarder,
and the subscriber's frames are decoded by aiortc.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

import stagecast
from schemas.client import (
    Ack,
    PublishedLayer,
    PublishTrack,
    RestartIce,
    SetTrackLayers,
    SignalAnswer,
    SignalOffer,
)
from stagecast import errors
from stagecast.client import Room
from stagecast.client.events import Subscription
from stagecast.client.media import PeerMedia
from tests.polling import eventually
from tests.stack_fixtures import AUDIENCE, WAIT, Stack, sdk_stack

ROOM = "media-room"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, forwarders=1) as running:
        yield running


class Watcher:
    """Collects a room's `stream-subscribed` tracks and counts the frames each decodes."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.frames: dict[tuple[str, str], int] = {}
        self.first_frame_at: dict[tuple[str, str], float] = {}
        self.subscribed_at: dict[tuple[str, str], float] = {}
        self.sizes: set[tuple[int, int]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        room.on("participant-joined", self._watch)

    def _watch(self, participant: stagecast.RemoteParticipant) -> None:
        participant.on("stream-subscribed", self._subscribed)
        participant.on("stream-unsubscribed", self._unsubscribed)

    def _subscribed(self, sub: Subscription) -> None:
        key = (sub.participant_id, sub.kind)
        self.subscriptions[key] = sub
        self.subscribed_at[key] = asyncio.get_running_loop().time()
        self._tasks.append(asyncio.create_task(self._consume(key, sub)))

    def _unsubscribed(self, sub: Subscription) -> None:
        key = (sub.participant_id, sub.kind)
        if self.subscriptions.get(key) is sub:
            del self.subscriptions[key]

    async def _consume(self, key: tuple[str, str], sub: Subscription) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await sub.track.recv()
                self.first_frame_at.setdefault(key, asyncio.get_running_loop().time())
                self.frames[key] = self.frames.get(key, 0) + 1
                if sub.kind == "video":
                    self.sizes.add((frame.width, frame.height))

    def decoded(self, participant_id: str, kind: str) -> int:
        return self.frames.get((participant_id, kind), 0)

    async def more_frames(
        self, participant_id: str, kind: str, n: int = 5, timeout: float = WAIT
    ) -> None:
        start = self.decoded(participant_id, kind)
        await eventually(
            lambda: self.decoded(participant_id, kind) >= start + n,
            what=f"{n} more {kind} frames from {participant_id}",
            timeout=timeout,
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


MEDIA_CODE = ("/aiortc/", "/aioice/", "/forwarder/", "/rtc/", "/stagecast/client/media")


def _is_media(coro: Any) -> bool:
    """Whether a task's coroutine, or one it awaits, is media code (`wait_for` wraps)."""
    while coro is not None:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is not None and any(part in code.co_filename for part in MEDIA_CODE):
            return True
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return False


def forwarded(stack: Stack, track_sid: str, forwarder_id: str = "FW_0") -> int:
    router = stack.forwarders[forwarder_id].forwarder.router
    return router.stats(track_sid).packets_forwarded if track_sid in router.track_ids else 0


async def test_two_clients_publish_and_subscribe_audio_and_video(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    alice_seen = Watcher(alice)
    await alice.local_participant.publish(VideoStreamTrack())
    await alice.local_participant.publish(AudioStreamTrack())
    await bob.local_participant.publish(VideoStreamTrack())
    await seen.more_frames("alice", "video")
    await seen.more_frames("alice", "audio")
    await alice_seen.more_frames("bob", "video")
    assert seen.sizes == {(640, 480)}  # aiortc's VideoStreamTrack, decoded on bob's side
    subscription = seen.subscriptions[("alice", "video")]
    assert subscription.video is subscription.track and subscription.audio is None
    await seen.close()
    await alice_seen.close()


async def test_a_late_subscriber_gets_a_keyframe_and_decodes_within_a_second(
    stack: Stack,
) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    publication = await alice.local_participant.publish(VideoStreamTrack())
    router = stack.forwarders["FW_0"].forwarder.router
    await eventually(lambda: publication.sid in router.track_ids, what="the track on the forwarder")
    await asyncio.sleep(2.0)  # long past the publisher's first keyframe
    before = router.stats(publication.sid).keyframe_requests
    carol = await stack.join(stack.token("carol", ROOM))
    seen = Watcher(carol)
    await seen.more_frames("alice", "video", 1)
    assert router.stats(publication.sid).keyframe_requests > before
    waited = seen.first_frame_at[("alice", "video")] - seen.subscribed_at[("alice", "video")]
    assert waited < 1.0, f"the first frame took {waited:.2f} s after the subscription"
    await seen.close()


async def test_mute_stops_packets_and_unmute_resumes(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    publication = await alice.local_participant.publish(VideoStreamTrack())
    await seen.more_frames("alice", "video")
    await publication.mute()
    router = stack.forwarders["FW_0"].forwarder.router
    await eventually(lambda: router.stats(publication.sid).muted, what="muted on the forwarder")
    await asyncio.sleep(0.3)  # packets in flight land
    sent = forwarded(stack, publication.sid)
    dropped = router.stats(publication.sid).packets_dropped_muted
    await asyncio.sleep(1.0)
    assert forwarded(stack, publication.sid) == sent  # nothing forwarded while muted
    assert router.stats(publication.sid).packets_dropped_muted > dropped
    await publication.unmute()
    await seen.more_frames("alice", "video")
    assert forwarded(stack, publication.sid) > sent
    await seen.close()


async def test_unpublish_and_leave_clean_up_every_leg(stack: Stack) -> None:
    service = stack.forwarders["FW_0"]
    tasks_before = set(asyncio.all_tasks())
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    video = await alice.local_participant.publish(VideoStreamTrack())
    await alice.local_participant.publish(AudioStreamTrack())
    await seen.more_frames("alice", "video")
    await seen.more_frames("alice", "audio")
    assert len(service.forwarder.peer_connections) == 4  # 2 publisher + 2 subscriber legs
    gone: list[Subscription] = []
    bob.remote_participants["alice"].on("stream-unsubscribed", gone.append)
    await alice.local_participant.unpublish(video)
    await eventually(
        lambda: len(service.forwarder.peer_connections) == 2, what="the video's connections close"
    )
    await eventually(lambda: [s.kind for s in gone] == ["video"], what="stream-unsubscribed")
    await alice.leave()
    await eventually(
        lambda: service.forwarder.peer_connections == [], what="every connection closes"
    )
    assert bob.media is not None
    media = bob.media
    assert isinstance(media, PeerMedia)
    await eventually(lambda: media.peer_connections == [], what="bob's connections close")
    await seen.close()
    await bob.leave()

    def leftovers() -> set[asyncio.Task[Any]]:
        """Media tasks (aiortc's, the forwarder's, the SDK transport's) still running."""
        return {
            t
            for t in asyncio.all_tasks() - tasks_before
            if not t.done() and _is_media(t.get_coro())
        }

    await eventually(lambda: not leftovers(), what="no media tasks left", timeout=WAIT)


async def test_selective_subscription_without_auto_subscribe(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    await alice.local_participant.publish(VideoStreamTrack())
    await alice.local_participant.publish(AudioStreamTrack())
    bob = await stack.join(stack.token("bob", ROOM), auto_subscribe=False)
    seen = Watcher(bob)
    await asyncio.sleep(1.0)
    assert seen.subscriptions == {}  # nothing arrives uninvited
    remote = bob.remote_participants["alice"]
    await remote.subscribe("audio")
    await seen.more_frames("alice", "audio")
    assert set(seen.subscriptions) == {("alice", "audio")}
    await remote.subscribe("video")
    await seen.more_frames("alice", "video")
    await remote.unsubscribe("audio")
    assert set(seen.subscriptions) == {("alice", "video")}
    await seen.close()


async def test_a_viewer_watches_a_speaker_and_cannot_publish(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    await alice.local_participant.publish(VideoStreamTrack())
    viewer = await stack.join(stack.token("viewer-1", ROOM, viewer=True, grant=AUDIENCE))
    seen = Watcher(viewer)
    await seen.more_frames("alice", "video")
    with pytest.raises(errors.InvalidPermissions):
        await viewer.local_participant.publish(VideoStreamTrack())
    await seen.close()


async def test_a_room_spanning_two_forwarders_relays_between_them(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    publication = await alice.local_participant.publish(VideoStreamTrack())
    first = stack.forwarders["FW_0"]
    await eventually(
        lambda: publication.sid in first.forwarder.router.track_ids, what="alice on FW_0"
    )
    await stack.start_forwarder("FW_1")  # idle, so the least loaded from now on
    await asyncio.sleep(1.5)  # FW_0's next heartbeat carries alice's load
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    await seen.more_frames("alice", "video")
    second = stack.forwarders["FW_1"]
    assert len(second.forwarder.peer_connections) == 1  # bob's leg is on FW_1
    assert publication.sid in second.forwarder.router.track_ids  # relayed there from FW_0
    await seen.close()


async def test_a_subscriber_moves_when_its_forwarder_dies(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    publication = await alice.local_participant.publish(VideoStreamTrack())
    first = stack.forwarders["FW_0"]
    await eventually(
        lambda: publication.sid in first.forwarder.router.track_ids, what="alice on FW_0"
    )
    async with contextlib.AsyncExitStack() as doomed:
        await stack.start_forwarder("FW_1", doomed)
        await asyncio.sleep(1.5)
        bob = await stack.join(stack.token("bob", ROOM))
        seen = Watcher(bob)
        await seen.more_frames("alice", "video")
        assert len(stack.forwarders["FW_1"].forwarder.peer_connections) == 1
    # FW_1 is gone (its connections closed, its heartbeat stopped): bob moves to FW_0
    await eventually(
        lambda: len(first.forwarder.peer_connections) == 2, what="bob's leg on FW_0", timeout=WAIT
    )
    await seen.more_frames("alice", "video")
    await seen.close()


async def test_a_replaced_publisher_connection_sends_the_same_track(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    publication = await alice.local_participant.publish(VideoStreamTrack())
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    await seen.more_frames("alice", "video")
    media = alice.media
    assert isinstance(media, PeerMedia)
    (failed,) = media.peer_connections
    await media._restart_outbound(publication.sid, failed)  # what a `failed` state starts
    (replacement,) = media.peer_connections
    assert replacement is not failed
    # closing the old connection must not stop the track the new one sends (aiortc would)
    await seen.more_frames("alice", "video", n=30)
    await seen.close()


async def test_bad_media_signaling_gets_named_errors_and_media_goes_on(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    await alice.local_participant.publish(VideoStreamTrack())
    await seen.more_frames("alice", "video")
    mallory = await stack.join(stack.token("mallory", ROOM))
    viewer = await stack.join(stack.token("viewer-2", ROOM, viewer=True, grant=AUDIENCE))
    announced = await mallory.request(PublishTrack(id=0, kind="video"))
    assert isinstance(announced, Ack) and announced.sid
    sid, denied = announced.sid, errors.InvalidPermissions
    offer, answer, missing = SignalOffer, SignalAnswer, errors.TrackNotFound

    def layer(rid: Any, width: int) -> PublishedLayer:  # nonsense on purpose: rid "x", width 0
        return PublishedLayer(rid=rid, width=width, height=360, max_bitrate=500_000)

    cases: list[tuple[Room, Any, type[errors.StagecastError]]] = [
        (mallory, offer(id=0, target="publisher", sdp="v=0"), errors.BadRequest),
        (mallory, offer(id=0, target="subscriber", sdp="v=0", track_sid=sid), errors.BadRequest),
        (mallory, offer(id=0, target="publisher", sdp="v", track_sid="TR_x"), missing),
        (mallory, offer(id=0, target="publisher", sdp="garbage", track_sid=sid), errors.BadRequest),
        (mallory, answer(id=0, target="subscriber", sdp="v", track_sid="TR_x"), missing),
        (mallory, RestartIce(id=0, track_sid="TR_x"), missing),
        (mallory, SetTrackLayers(id=0, track_sid="TR_x", layers=(layer("f", 640),)), missing),
        (mallory, SetTrackLayers(id=0, track_sid=sid, layers=(layer("f", 0),)), errors.BadRequest),
        (mallory, SetTrackLayers(id=0, track_sid=sid, layers=(layer("x", 64),)), errors.BadRequest),
        (viewer, offer(id=0, target="publisher", sdp="v", track_sid=sid), denied),
    ]
    for room, frame, expected in cases:
        with pytest.raises(expected):
            await room.request(frame)
    await seen.more_frames("alice", "video")  # the forwarder and everyone else carry on
    await seen.close()
