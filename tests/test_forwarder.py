"""The forwarder between real aiortc peers on loopback: packets in, packets out, no codecs.

A publisher peer sends aiortc's synthetic tracks (640x480 video, audio) to a `Forwarder`;
subscriber peers receive through it and decode. aiortc's VP8 encoder only makes a keyframe
every 3000 frames, so a subscriber that decodes after joining late got its keyframe
through the forwarder's PLI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import get_decoder, get_encoder
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

from forwarder.errors import DuplicateSession, InvalidStateError, TrackNotFound
from forwarder.node import Forwarder, LegState, PublisherAnswer
from tests.polling import settled

WAIT = 10.0


async def eventually(check: Callable[[], Any], *, what: str, timeout: float = WAIT) -> Any:
    """Poll `check` until truthy; fail with what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        await asyncio.sleep(0.02)


def peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class Viewer:
    """A subscriber peer that decodes every track it gets and counts the frames."""

    def __init__(self) -> None:
        self.pc = peer()
        self.frames: dict[str, int] = {}
        self.last: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        self.frames[track.id] = 0
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames[track.id] += 1
                self.last[track.id] = frame

    def decoded(self, *track_ids: str, at_least: int = 1) -> Callable[[], bool]:
        """A check for `eventually`: each of the tracks decoded `at_least` frames."""
        return lambda: all(self.frames.get(t, 0) >= at_least for t in track_ids)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self.pc.close(), WAIT)


class Room:
    """A forwarder and the client peers of one test; `close()` closes them all."""

    def __init__(self) -> None:
        self.forwarder = Forwarder()
        self.publishers: list[RTCPeerConnection] = []
        self.viewers: list[Viewer] = []

    async def publish(self, publisher_key: str) -> PublisherAnswer:
        pc = peer()
        self.publishers.append(pc)
        pc.addTrack(VideoStreamTrack())
        pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self.forwarder.add_publisher(
            pc.localDescription.sdp,
            publisher_key=publisher_key,
            track_ids={"0": f"{publisher_key}-cam", "1": f"{publisher_key}-mic"},
        )
        await pc.setRemoteDescription(RTCSessionDescription(answer.answer_sdp, "answer"))
        return answer

    async def subscribe(self, subscriber_id: str, track_ids: list[str]) -> Viewer:
        viewer = Viewer()
        self.viewers.append(viewer)
        offer = await self.forwarder.add_subscriber(subscriber_id, track_ids)
        await viewer.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await viewer.pc.setLocalDescription(await viewer.pc.createAnswer())
        await self.forwarder.set_subscriber_answer(subscriber_id, viewer.pc.localDescription.sdp)
        return viewer

    def forwarded(self, track_id: str) -> int:
        return self.forwarder.router.stats(track_id).packets_forwarded

    async def close(self) -> None:
        await self.forwarder.close()
        for viewer in self.viewers:
            await viewer.close()
        for pc in self.publishers:
            await asyncio.wait_for(pc.close(), WAIT)


@pytest.fixture
async def room() -> AsyncIterator[Room]:
    room = Room()
    try:
        yield room
    finally:
        await room.close()


async def test_subscribers_decode_the_publishers_frames(room: Room) -> None:
    answer = await room.publish("alice")
    assert [(t.track_id, t.kind, t.codec.name) for t in answer.tracks] == [
        ("alice-cam", "video", "VP8"),
        ("alice-mic", "audio", "OPUS"),
    ]
    viewers = [await room.subscribe(name, ["alice-cam", "alice-mic"]) for name in ("bob", "eve")]
    for viewer in viewers:
        await eventually(
            viewer.decoded("alice-cam", "alice-mic", at_least=5),
            what="video and audio frames at a subscriber",
        )
        video, audio = viewer.last["alice-cam"], viewer.last["alice-mic"]
        assert (video.width, video.height) == (640, 480)
        assert audio.sample_rate == 48000 and audio.samples > 0
    assert room.forwarder.router.legs("alice-cam") == ["bob/alice-cam", "eve/alice-cam"]


async def test_a_late_subscriber_gets_a_keyframe(room: Room) -> None:
    await room.publish("alice")
    early = await room.subscribe("bob", ["alice-cam"])
    await eventually(early.decoded("alice-cam", at_least=30), what="a second of video")
    requests_before = room.forwarder.router.stats("alice-cam").keyframe_requests
    plis_before = room.forwarder.inbound("alice-cam").keyframe_requests_sent
    late = await room.subscribe("carol", ["alice-cam"])
    loop = asyncio.get_running_loop()
    joined = loop.time()
    await eventually(late.decoded("alice-cam"), what="the late subscriber")
    print(f"late subscriber decoded its first frame {loop.time() - joined:.2f} s after joining")
    assert room.forwarder.router.stats("alice-cam").keyframe_requests > requests_before
    assert room.forwarder.inbound("alice-cam").keyframe_requests_sent > plis_before
    frames_before = early.frames["alice-cam"]
    await eventually(lambda: early.frames["alice-cam"] > frames_before, what="bob still decoding")


async def test_mute_stops_packets_and_unmute_resumes(room: Room) -> None:
    await room.publish("alice")
    viewer = await room.subscribe("bob", ["alice-cam", "alice-mic"])
    await eventually(viewer.decoded("alice-cam", at_least=5), what="video frames")

    room.forwarder.set_muted("alice-cam", True)
    forwarded = room.forwarded("alice-cam")
    audio_forwarded = room.forwarded("alice-mic")
    dropped = room.forwarder.router.stats("alice-cam").packets_dropped_muted
    frames = await settled(lambda: viewer.frames["alice-cam"], what="video frames while muted")
    stats = room.forwarder.router.stats("alice-cam")
    assert stats.muted and stats.packets_forwarded == forwarded
    assert stats.packets_dropped_muted > dropped
    assert room.forwarded("alice-mic") > audio_forwarded  # the other track is not muted

    room.forwarder.set_muted("alice-cam", False)
    await eventually(lambda: room.forwarded("alice-cam") > forwarded, what="packets after unmute")
    await eventually(lambda: viewer.frames["alice-cam"] > frames + 5, what="frames after unmute")


async def test_unsubscribe_leave_and_close_leave_nothing_behind() -> None:
    tasks_before = asyncio.all_tasks()
    room = Room()
    try:
        await room.publish("alice")
        bob = await room.subscribe("bob", ["alice-cam", "alice-mic"])
        eve = await room.subscribe("eve", ["alice-cam"])
        for viewer in (bob, eve):
            await eventually(viewer.decoded("alice-cam", at_least=3), what="frames")
        router = room.forwarder.router

        room.forwarder.unsubscribe("bob", "alice-cam")
        assert router.legs("alice-cam") == ["eve/alice-cam"]
        assert room.forwarder.legs("bob")["alice-cam"].state is LegState.CLOSED
        await settled(lambda: bob.frames["alice-cam"], what="bob's video after unsubscribing")
        assert router.legs("alice-mic") == ["bob/alice-mic"]

        subscriber_pcs = list(room.forwarder.peer_connections)
        await room.forwarder.remove_subscriber("eve")
        assert router.legs("alice-cam") == []
        assert len(room.forwarder.peer_connections) == len(subscriber_pcs) - 1

        await room.forwarder.remove_publisher("alice")
        assert router.track_ids == []
        with pytest.raises(TrackNotFound):
            await room.forwarder.add_subscriber("zoe", ["alice-cam"])
    finally:
        await room.close()
    await room.forwarder.close()  # idempotent
    assert room.forwarder.peer_connections == []
    assert all(pc.connectionState == "closed" for pc in subscriber_pcs)
    with pytest.raises(InvalidStateError):
        await room.forwarder.add_subscriber("zoe", [])

    def leftovers() -> set[asyncio.Task[Any]]:
        return asyncio.all_tasks() - tasks_before - {asyncio.current_task()}

    await eventually(lambda: not leftovers(), what="tasks to finish", timeout=5)


async def test_the_forwarder_never_decodes_or_encodes(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoders: list[str] = []
    encoders: list[str] = []

    def counting_get_decoder(codec: Any) -> Any:
        decoders.append(codec.mimeType)
        return get_decoder(codec)

    def counting_get_encoder(codec: Any) -> Any:
        encoders.append(codec.mimeType)
        return get_encoder(codec)

    # the names the decoder thread and the sender's RTP loop look up at call time
    monkeypatch.setattr("aiortc.rtcrtpreceiver.get_decoder", counting_get_decoder)
    monkeypatch.setattr("aiortc.rtcrtpsender.get_encoder", counting_get_encoder)

    await room.publish("alice")
    cam, mic = room.forwarder.inbound("alice-cam"), room.forwarder.inbound("alice-mic")
    await eventually(
        lambda: cam.packets_received > 50 and mic.packets_received > 50, what="packets in"
    )
    assert decoders == []  # packets arrived at the forwarder, nothing decoded them
    assert sorted(encoders) == ["audio/opus", "video/VP8"]  # the publisher's own encoders
    assert not cam.decoder_running and not mic.decoder_running

    viewer = await room.subscribe("bob", ["alice-cam", "alice-mic"])
    await eventually(
        viewer.decoded("alice-cam", "alice-mic", at_least=5),
        what="decoded frames at the subscriber",
    )
    assert sorted(decoders) == ["audio/opus", "video/VP8"]  # the subscriber's, only
    assert sorted(encoders) == ["audio/opus", "video/VP8"]  # the forwarder encoded nothing
    assert room.forwarded("alice-cam") > 0


async def test_sessions_are_named_errors(room: Room) -> None:
    await room.publish("alice")
    with pytest.raises(DuplicateSession):
        await room.publish("alice")
    with pytest.raises(TrackNotFound):
        await room.forwarder.add_subscriber("bob", ["nobody-cam"])
    assert len(room.forwarder.peer_connections) == 1  # the failed calls left no connection


async def test_concurrent_publishes_of_one_id_leave_one_session(room: Room) -> None:
    offers = []
    for _ in range(2):
        pc = peer()
        room.publishers.append(pc)
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
    results = await asyncio.gather(
        *(room.forwarder.add_publisher(sdp, publisher_key="alice") for sdp in offers),
        return_exceptions=True,
    )
    assert sum(isinstance(r, DuplicateSession) for r in results) == 1
    assert len(room.forwarder.peer_connections) == 1
    assert room.forwarder.router.track_ids == ["alice:0"]
