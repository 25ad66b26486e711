"""The chaos benchmark's media pair: one SDK publisher and one SDK subscriber, and the
longest gap in what the subscriber decodes across the forwarder kill.

The publisher sends one small VP8 video track (`SIZE` at 30 fps: a few kbit/s, light
next to the signaling storm in the same process); the subscriber, in the same room on the
same edge, decodes it and stamps every frame. `carrier` names the forwarder carrying the
publisher (from the forwarders' heartbeats), which is the one the chaos run kills; after
the kill, `resumed` waits until frames flow again, through the surviving forwarder, and
`longest_gap` is the media figure: the longest time without a decoded frame from 1 s
before the kill until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools

from aiortc.mediastreams import MediaStreamError, VideoStreamTrack
from av import VideoFrame
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.codec import SchemaError, decode
from schemas.media import ForwarderHeartbeat
from schemas.subjects import FORWARDER_HEARTBEAT
from stagecast.client import Room
from stagecast.client.events import Subscription
from stagecast.client.participant import RemoteParticipant

SIZE = (160, 120)
FLOWING_FRAMES = 30
"""Frames decoded after the kill that count as media flowing again (1 s at 30 fps)."""
HEARTBEAT_WAIT_S = 2.5


class SmallVideo(VideoStreamTrack):
    """A 160x120 moving gradient at 30 fps (aiortc's own track is 640x480)."""

    def __init__(self) -> None:
        super().__init__()
        self._n = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        width, height = SIZE
        frame = VideoFrame(width=width, height=height, format="yuv420p")
        shade = (self._n * 4) % 256
        for plane in frame.planes:
            plane.update(bytes([shade]) * plane.buffer_size)
        self._n += 1
        frame.pts = pts
        frame.time_base = fractions.Fraction(time_base)
        return frame


class MediaPair:
    """The publisher and subscriber `Room`s and the times the subscriber decoded frames."""

    def __init__(self, publisher: Room, subscriber: Room) -> None:
        self.publisher = publisher
        self.subscriber = subscriber
        self.frames: list[float] = []
        """Loop times of every decoded frame, in order."""
        self.subscriptions = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        subscriber.on("participant-joined", self._watch)
        for participant in subscriber.remote_participants.values():
            self._watch(participant)

    def _watch(self, participant: RemoteParticipant) -> None:
        participant.on("stream-subscribed", self._subscribed)

    def _subscribed(self, sub: Subscription) -> None:
        if sub.kind == "video":
            self.subscriptions += 1
            self._tasks.append(asyncio.create_task(self._consume(sub)))

    async def _consume(self, sub: Subscription) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await sub.track.recv()
                self.frames.append(self._loop.time())

    async def start(self, timeout: float) -> None:
        """Publish, and wait until the subscriber decodes frames (`TimeoutError`)."""
        await self.publisher.local_participant.publish(SmallVideo())
        deadline = self._loop.time() + timeout
        while len(self.frames) < FLOWING_FRAMES:
            if self._loop.time() > deadline:
                raise TimeoutError(f"the media pair decoded {len(self.frames)} frames")
            await asyncio.sleep(0.1)

    async def resumed(self, since: float, limit: float) -> float:
        """Seconds from `since` until `FLOWING_FRAMES` frames were decoded after the
        longest silence that began after `since - 1` (inf if not within `limit`)."""
        while self._loop.time() - since < limit:
            flowing = self.flowing_again(since)
            if flowing is not None:
                return flowing - since
            await asyncio.sleep(0.1)
        return float("inf")

    def flowing_again(self, since: float) -> float | None:
        """When frames flowed again after the kill at `since` (None: not yet)."""
        return flowing_again(self.frames, since)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] without a decoded frame."""
        return longest_silence(self.frames, start, end)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            self.publisher.leave(), self.subscriber.leave(), return_exceptions=True
        )


def flowing_again(frames: list[float], since: float) -> float | None:
    """The time of the `FLOWING_FRAMES`-th frame after the first silence of over 0.5 s that
    ends after `since` (frames from `since - 1` on; None while there is no such silence, or
    not that many frames after it yet)."""
    times = [t for t in frames if t >= since - 1.0]
    for i in range(1, len(times)):
        if times[i] - times[i - 1] > 0.5 and times[i] > since:
            after = times[i:]
            return after[FLOWING_FRAMES - 1] if len(after) >= FLOWING_FRAMES else None
    return None


def longest_silence(frames: list[float], start: float, end: float) -> float:
    """The longest time in [start, end] without a frame (`frames` in order)."""
    times = [start, *(t for t in frames if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(times))


async def carrier(nc: NATS, wait: float = HEARTBEAT_WAIT_S) -> str | None:
    """The forwarder whose heartbeat says it carries a published track (the pair's)."""
    carrying: dict[str, int] = {}

    async def on_beat(msg: Msg) -> None:
        with contextlib.suppress(SchemaError):
            beat = decode(msg.data)
            if isinstance(beat, ForwarderHeartbeat) and not beat.stopping:
                carrying[beat.forwarder_id] = beat.published_tracks

    sub = await nc.subscribe(FORWARDER_HEARTBEAT, cb=on_beat)
    try:
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    found = [f for f, tracks in sorted(carrying.items()) if tracks > 0]
    return found[0] if found else None


__all__ = ["MediaPair", "SmallVideo", "carrier", "flowing_again", "longest_silence"]
