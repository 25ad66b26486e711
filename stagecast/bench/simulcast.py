"""simulcast_switch_ms: from a subscriber's layer request to its first packet of the layer.

Measured on the forwarder's core in real time: a `Router` with a simulcast track fed by a
synthetic three-layer VP8 publisher (30 frames/s; 1, 2 and 4 packets per frame for q, h
and f) that answers a keyframe request with a keyframe at its next frame, as a browser
does. One leg is switched low -> high -> low ... `--switches` times, a second apart;
each switch is timed from `set_preference` to the leg's first packet of the new layer (the
keyframe the switch happens at). It covers the keyframe request, its rate limit and the
wait for the publisher's next frame; not the network or an encoder's keyframe cost, which
the browser tests see end to end.
"""

from __future__ import annotations

import asyncio
import time

from forwarder.layers import Quality
from forwarder.router import Router
from forwarder.simulcast import LAYER_RIDS
from forwarder.simulcast_track import LayerSource
from rtc.packets import CodecInfo, MediaPacket
from stagecast.bench import Result, percentile

FPS = 30
PACKETS_PER_FRAME = (1, 2, 4)
SWITCH_SPACING_S = 1.0
SWITCH_LIMIT_S = 5.0
"""A switch that has not happened after this long ends the measurement (an error)."""

_VP8 = CodecInfo(kind="video", mime_type="video/VP8", clock_rate=90000)


class _Publisher:
    def __init__(self) -> None:
        self.keyframe_on: set[int] = {0, 1, 2}
        self.seq = [0, 20000, 40000]
        self.ts = [0, 1_000_000, 2_000_000]
        self.pid = [0, 1000, 2000]
        self.source = LayerSource(request_keyframe=self.keyframe_on.add, sender_reports=dict)

    def frame(self) -> list[MediaPacket]:
        packets = []
        for layer, count in enumerate(PACKETS_PER_FRAME):
            key = layer in self.keyframe_on
            pid = self.pid[layer]
            for part in range(count):
                first = 0x90 if part == 0 else 0x80
                header = bytes([first, 0x80, 0x80 | pid >> 8, pid & 0xFF])
                body = bytes([0 if key else 1]) + b"\x00" * 900
                packets.append(
                    MediaPacket(
                        sequence_number=self.seq[layer],
                        timestamp=self.ts[layer],
                        marker=int(part == count - 1),
                        payload=header + body,
                        ssrc=layer + 1,
                        payload_type=96,
                        rid=LAYER_RIDS[layer],
                    )
                )
                self.seq[layer] = (self.seq[layer] + 1) & 0xFFFF
            self.ts[layer] = (self.ts[layer] + 90000 // FPS) % (1 << 32)
            self.pid[layer] = (pid + 1) & 0x7FFF
        self.keyframe_on.clear()
        return packets


class _Leg:
    leg_id = "bench/cam"

    def __init__(self) -> None:
        self.rid: str | None = None
        self.changed = asyncio.Event()

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        if packet.rid != self.rid:
            self.rid = packet.rid
            self.changed.set()
        return True


async def switch_times(switches: int) -> list[float]:
    """Milliseconds per layer switch, `switches` of them alternating low and high."""
    router = Router()
    publisher = _Publisher()
    router.publish("cam", _VP8, request_keyframe=lambda: None, simulcast=publisher.source)
    track = router.simulcast("cam")
    assert track is not None
    leg = _Leg()
    stop = asyncio.Event()

    async def publish() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            for packet in publisher.frame():
                await router.forward("cam", packet)
            next_at += 1 / FPS
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    task = asyncio.create_task(publish())
    times: list[float] = []
    try:
        router.subscribe("cam", leg)
        await _until(leg, "f")
        for n in range(switches):
            await asyncio.sleep(SWITCH_SPACING_S)
            quality, rid = (Quality.LOW, "q") if n % 2 == 0 else (Quality.HIGH, "f")
            leg.changed.clear()
            asked = time.perf_counter()
            track.set_preference(leg.leg_id, quality=quality)
            await _until(leg, rid)
            times.append((time.perf_counter() - asked) * 1000)
    finally:
        stop.set()
        await task
        router.close()
    return times


async def _until(leg: _Leg, rid: str) -> None:
    async with asyncio.timeout(SWITCH_LIMIT_S):
        while leg.rid != rid:
            await leg.changed.wait()
            leg.changed.clear()


async def simulcast_figures(switches: int) -> list[Result]:
    """The `simulcast_switch_ms` p50 and p99 over `switches` switches (none for 0)."""
    if switches <= 0:
        return []
    times = await switch_times(switches)
    note = f"{len(times)} switches, router core, publisher keyframe at its next frame"
    return [
        Result("simulcast_switch_ms_p50", percentile(times, 50), "ms", note),
        Result("simulcast_switch_ms_p99", percentile(times, 99), "ms", note),
    ]
