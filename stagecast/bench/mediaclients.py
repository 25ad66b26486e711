"""The media benchmark's clients: one publisher process and subscriber processes.

They run in their own processes so that the forwarder's CPU time is its own; subscribers
run at a lower priority (nice 10) so that, on a small machine, they take what the
forwarder leaves rather than compete with it.

- The publisher sends either a VP8 video track or an Opus audio track. The video is a
  synthetic moving pattern (diagonal bars scrolling under a moving noise patch),
  640x360 at 30 fps, encoded once at start-up by libvpx in CBR at 3.2 Mbit/s, which makes
  about 10 RTP packets per frame (~300 packets/s); the encoded frames then loop (the
  publisher does no encoding while it is measured). Frame 0 is the only keyframe; it is
  sent first and again on `keyframe` (as an encoder does after a PLI), and every
  `--keyframe-interval` seconds when asked (a keyframe is ~45 packets, a delta frame ~10).
  The audio is a 450 Hz tone encoded live by aiortc's Opus encoder (20 ms frames, 50
  packets/s).
  The publisher stamps each RTP packet's send time (CLOCK_MONOTONIC, just before the
  socket write) by its (SSRC, sequence number), for the latency figures; it can pace its
  packets as a browser does (`SendLog`).
- Subscribers answer the forwarder's offers and count the RTP packets that reach each
  receiver, without depacketizing, decoding, NACKs or REMB.

Both tap aiortc through `rtc.aiortc_adapter` (whose private names
`tests/test_rtc_adapter.py` checks on the pinned version): `tap_transport_sends` (stamps)
and `tap_receiver_packets` (counts).
"""

from __future__ import annotations

import asyncio
import fractions
import math
import random
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import is_rtcp
from av import AudioFrame, Packet

from rtc.aiortc_adapter import tap_receiver_packets, tap_transport_sends
from stagecast.bench.workers import Handler, serve, set_priority

VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS = 640, 360, 30
VIDEO_BITRATE = 3_200_000
"""The clip's CBR target: ~10 packets of <= 1,300 bytes per frame at 30 fps."""
CLIP_FRAMES = 90
"""Three seconds of video, looped (frames 1..89 after the first pass)."""
VIDEO_CLOCK = 90_000
AUDIO_RATE, AUDIO_PTIME, TONE_HZ = 48_000, 0.020, 450
SUBSCRIBER_NICENESS = 10
MAX_STAMPS = 1 << 20
"""Send stamps kept between two reads (a bound: ~4 minutes of video at 300 packets/s)."""
ANSWER_CONCURRENCY = 25
PACING_STEP = 0.001


def encode_clip(
    width: int = VIDEO_WIDTH,
    height: int = VIDEO_HEIGHT,
    fps: int = VIDEO_FPS,
    bitrate: int = VIDEO_BITRATE,
    frames: int = CLIP_FRAMES,
) -> list[bytes]:
    """VP8 frames of a moving pattern, frame 0 a keyframe, the rest inter frames.

    Encoded with the options aiortc's own `Vp8Encoder` uses (libvpx realtime CBR), at a
    fixed `bitrate`. Deterministic content: a seeded noise patch keeps the encoder busy
    enough to fill the bitrate.
    """
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(fps, 1)
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = 1 << 20  # one keyframe: the first
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(bitrate),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "overshoot-pct": "15",
        "undershoot-pct": "100",
        "static-thresh": "1",
        "partitions": "0",
    }
    rng = random.Random(1)
    ramp = bytes(range(0, 256, 4)) * (width // 64 + 2)
    squash = bytes(80 + b * 3 // 8 for b in range(256))  # noise in 80..175
    chroma = bytes([128]) * (width * height // 4)
    patch = width // 2
    encoded: list[bytes] = []
    for n in range(frames):
        x0 = (n * 12) % (width - patch)
        rows = []
        for row in range(height):
            shift = (n * 8 + row) % 64
            line = ramp[shift : shift + width]
            if height // 4 <= row < 3 * height // 4:
                noise = rng.randbytes(patch).translate(squash)
                line = line[:x0] + noise + line[x0 + patch :]
            rows.append(line)
        frame = av.VideoFrame(width=width, height=height, format="yuv420p")
        frame.planes[0].update(b"".join(rows))
        frame.planes[1].update(chroma)
        frame.planes[2].update(ramp[n % 64 : n % 64 + width // 2] * (height // 2))
        frame.pts = n
        encoded += [bytes(packet) for packet in codec.encode(frame)]
    encoded += [bytes(packet) for packet in codec.encode(None)]
    return encoded


class ClipTrack(MediaStreamTrack):
    """A video track of pre-encoded VP8 frames, paced at `fps`, looping without keyframes."""

    kind = "video"

    def __init__(
        self, frames: list[bytes], fps: int = VIDEO_FPS, *, keyframe_every: int = 0
    ) -> None:
        super().__init__()
        self._frames = frames
        self._fps = fps
        self._keyframe_every = keyframe_every
        """Send the keyframe every this many frames as well (0: only when asked)."""
        self._start: float | None = None
        self._count = 0
        self._keyframe = True

    def keyframe(self) -> None:
        """Send the keyframe next (what an encoder does when asked for one)."""
        self._keyframe = True

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + self._count / self._fps - loop.time()))
        every = self._keyframe_every
        if self._keyframe or (every and self._count % every == 0):
            self._keyframe = False
            index = 0
        else:
            index = 1 + self._count % (len(self._frames) - 1)
        packet = Packet(self._frames[index])
        packet.pts = self._count * (VIDEO_CLOCK // self._fps)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return packet


class ToneTrack(MediaStreamTrack):
    """An audio track of a steady tone, 20 ms frames at 48 kHz, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        samples = int(AUDIO_RATE * AUDIO_PTIME)
        self._samples = samples
        self._pcm = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * TONE_HZ * i / AUDIO_RATE)))
            for i in range(samples)
        )
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + self._count * AUDIO_PTIME - loop.time()))
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._count * self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._count += 1
        return frame


def peer() -> RTCPeerConnection:
    """A peer connection with host candidates only (everything runs on loopback)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def stamp_key(ssrc: int, sequence_number: int) -> int:
    """How a packet is named across processes: its publisher SSRC and sequence number."""
    return ssrc << 16 | sequence_number


class SendLog:
    """Wraps a DTLS transport's writes: stamps each RTP packet and optionally paces them.

    A stamp (CLOCK_MONOTONIC ns, first send of each `stamp_key`) is taken just before the
    write: after it, this process may lose the CPU to the forwarder the packet just woke,
    and the stamp would come late. With `pace_bps`, RTP leaves at most at that rate (in
    ~1 ms steps, the event loop's timer resolution), as a browser's pacer spreads a
    frame's packets; without it a frame's packets leave back to back, as aiortc sends.
    """

    def __init__(self, transport: Any, *, pace_bps: float = 0.0) -> None:
        self.stamps: dict[int, int] = {}
        self._pace_bps = pace_bps
        self._next = 0.0
        self._send_rtp = tap_transport_sends(transport, self._send)

    def take(self) -> dict[int, int]:
        """The stamps so far (then forgotten)."""
        taken, self.stamps = self.stamps, {}
        return taken

    async def _send(self, data: bytes) -> None:
        if len(data) < 12 or is_rtcp(data):
            await self._send_rtp(data)
            return
        if self._pace_bps:
            now = asyncio.get_running_loop().time()
            if self._next - now > PACING_STEP:
                await asyncio.sleep(self._next - now)
            self._next = max(now, self._next) + 8 * len(data) / self._pace_bps
        if len(self.stamps) < MAX_STAMPS:
            key = stamp_key(int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big"))
            self.stamps.setdefault(key, time.monotonic_ns())
        await self._send_rtp(data)


# -- the publisher process ----------------------------------------------------------------


def publisher_process(
    conn: Connection, kind: str, pace: float, lifetime: float, keyframe_interval: float = 0.0
) -> None:
    """Worker entry: publish one `kind` track ("video" or "audio") to the forwarder.

    `pace` > 0 paces RTP at `pace` x the video bitrate (0: no pacing); `keyframe_interval`
    > 0 sends the keyframe every that many seconds (0: only when the forwarder asks).
    """
    asyncio.run(_publish(conn, kind, pace, lifetime, keyframe_interval))


async def _publish(
    conn: Connection, kind: str, pace: float, lifetime: float, keyframe_interval: float
) -> None:
    pc = peer()
    every = round(keyframe_interval * VIDEO_FPS)
    clip = ClipTrack(encode_clip(), keyframe_every=every) if kind == "video" else None
    pc.addTrack(clip if clip is not None else ToneTrack())
    log: SendLog | None = None

    async def offer() -> str:
        nonlocal log
        await pc.setLocalDescription(await pc.createOffer())
        log = SendLog(pc.getTransceivers()[0].sender.transport, pace_bps=pace * VIDEO_BITRATE)
        return str(pc.localDescription.sdp)

    async def answer(sdp: str) -> None:
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def keyframe() -> None:
        if clip is not None:
            clip.keyframe()

    async def take_stamps() -> dict[int, int]:
        return log.take() if log is not None else {}

    handlers: dict[str, Handler] = {
        "offer": offer,
        "answer": answer,
        "keyframe": keyframe,
        "stamps": take_stamps,
    }
    await serve(conn, handlers, lifetime=lifetime, on_close=pc.close)


# -- the subscribers process --------------------------------------------------------------


def subscribers_process(conn: Connection, lifetime: float) -> None:
    """Worker entry: subscribers that answer offers and count what they receive."""
    set_priority(SUBSCRIBER_NICENESS)
    asyncio.run(_subscribe(conn, lifetime))


async def _subscribe(conn: Connection, lifetime: float) -> None:
    peers: dict[str, RTCPeerConnection] = {}
    received: dict[str, int] = {}
    limit = asyncio.Semaphore(ANSWER_CONCURRENCY)

    async def answer_one(subscriber_id: str, offer_sdp: str) -> str:
        async with limit:
            pc = peers[subscriber_id] = peer()
            received[subscriber_id] = 0
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            for transceiver in pc.getTransceivers():
                _count_packets(transceiver.receiver, received, subscriber_id)
            await pc.setLocalDescription(await pc.createAnswer())
            return str(pc.localDescription.sdp)

    async def answer_many(offers: list[tuple[str, str]]) -> list[str]:
        return list(await asyncio.gather(*(answer_one(s, sdp) for s, sdp in offers)))

    async def counts() -> dict[str, int]:
        return dict(received)

    async def close() -> None:
        await asyncio.gather(*(pc.close() for pc in peers.values()), return_exceptions=True)

    handlers: dict[str, Handler] = {"answer_many": answer_many, "counts": counts}
    await serve(conn, handlers, lifetime=lifetime, on_close=close)


def _count_packets(receiver: Any, received: dict[str, int], subscriber_id: str) -> None:
    async def count(packet: object, arrival_time_ms: int) -> None:
        received[subscriber_id] += 1

    tap_receiver_packets(receiver, count)
