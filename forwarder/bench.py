"""CPU per forwarded packet: one publisher fanned out to N subscribers over loopback.

The forwarder runs in its own process (so `time.process_time()` counts only its work);
this process runs the clients: a publisher sending a noisy 320x240 VP8 video (so packets
are full-sized) and Opus audio, and N subscribers that count what arrives without decoding
(through `InboundStream`, without REMB, to keep this process light on a small machine).
Two modes:

- ``forward``: `forwarder.node.Forwarder`, packets passed through (no decode, no encode);
- ``relay``: aiortc's `MediaRelay`, the decode/re-encode baseline (one decode per track,
  one encode per subscriber and track).

Run: ``python -m forwarder.bench --subscribers 10 --seconds 10 --mode both``. The figures
follow the ``stagecast bench`` convention: ``RESULT <figure> <value> <unit>`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from av import VideoFrame

from forwarder.aiortc_adapter import InboundStream
from forwarder.node import Forwarder
from forwarder.packets import MediaPacket
from stagecast.bench import Result, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--mode", choices=("forward", "relay", "both"), default="both")


@dataclass(frozen=True, slots=True)
class Measurement:
    mode: str
    subscribers: int
    seconds: float
    cpu_seconds: float
    """User + system CPU of the forwarder process (system includes loopback delivery)."""
    system_seconds: float
    packets_in: int
    packets_out: int
    packets_received: int
    """Packets the subscribers got (client side), over the same window."""

    @property
    def us_per_packet_out(self) -> float:
        return 1e6 * self.cpu_seconds / max(1, self.packets_out)

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds


async def run(args: argparse.Namespace) -> list[Result]:
    modes = ("forward", "relay") if args.mode == "both" else (args.mode,)
    results: list[Result] = []
    for mode in modes:
        m = await measure(mode, args.subscribers, args.seconds, args.warmup)
        note = f"1 -> {m.subscribers}, {m.packets_out} packets out in {m.seconds:.0f} s"
        results += [
            Result(f"{mode}_cpu_us_per_packet", m.us_per_packet_out, "us", note),
            Result(
                f"{mode}_cpu_us_per_packet_user",
                1e6 * (m.cpu_seconds - m.system_seconds) / max(1, m.packets_out),
                "us",
                "user space only (the kernel's loopback send+receive excluded)",
            ),
            Result(f"{mode}_cpu_percent", m.cpu_percent, "%", "of one core, forwarder process"),
            Result(f"{mode}_packets_out_per_s", m.packets_out / m.seconds, "1/s"),
            Result(
                f"{mode}_packets_in_per_s",
                m.packets_in / m.seconds,
                "1/s",
                "RTP" if mode == "forward" else "datagrams (RTP and RTCP)",
            ),
            Result(
                f"{mode}_packets_received_per_s",
                m.packets_received / m.seconds,
                "1/s",
                "RTP at the subscribers (client side)",
            ),
        ]
    return results


async def measure(mode: str, subscribers: int, seconds: float, warmup: float) -> Measurement:
    """Start a forwarder process in `mode`, fan one publisher out, measure its CPU."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_forwarder_process, args=(theirs, mode), daemon=True)
    process.start()
    peers: list[RTCPeerConnection] = []
    received = [0]

    async def call(*message: Any) -> Any:
        ours.send(message)
        return await asyncio.to_thread(ours.recv)

    async def count(packet: MediaPacket) -> None:
        received[0] += 1

    try:
        publisher = _peer()
        peers.append(publisher)
        publisher.addTrack(NoiseVideoTrack(320, 240))
        publisher.addTrack(AudioStreamTrack())
        await publisher.setLocalDescription(await publisher.createOffer())
        answer_sdp, track_ids = await call("publish", publisher.localDescription.sdp)
        await publisher.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        for i in range(subscribers):
            pc = _peer()
            peers.append(pc)
            offer_sdp = await call("subscribe", f"sub{i}", track_ids)
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            for transceiver in pc.getTransceivers():
                InboundStream(transceiver.receiver, count, remb=False)
            await pc.setLocalDescription(await pc.createAnswer())
            await call("answer", f"sub{i}", pc.localDescription.sdp)
        await asyncio.sleep(warmup)
        received_before = received[0]
        cpu, system, packets_in, packets_out, wall = await call("measure", seconds)
        return Measurement(
            mode=mode,
            subscribers=subscribers,
            seconds=wall,
            cpu_seconds=cpu,
            system_seconds=system,
            packets_in=packets_in,
            packets_out=packets_out,
            packets_received=received[0] - received_before,
        )
    finally:
        ours.send(("close",))
        await asyncio.to_thread(process.join, 20)
        if process.is_alive():
            process.kill()
        for pc in peers:
            await pc.close()


class NoiseVideoTrack(VideoStreamTrack):
    """Video of random pixels, so the encoder fills its bitrate with full-size packets."""

    def __init__(self, width: int, height: int, distinct: int = 10) -> None:
        super().__init__()
        self._size = (width, height)
        probe = VideoFrame(width=width, height=height, format="yuv420p")
        self._planes = [
            [os.urandom(plane.buffer_size) for plane in probe.planes] for _ in range(distinct)
        ]
        self._count = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        width, height = self._size
        frame = VideoFrame(width=width, height=height, format="yuv420p")
        for plane, data in zip(
            frame.planes, self._planes[self._count % len(self._planes)], strict=True
        ):
            plane.update(data)
        self._count += 1
        frame.pts = pts
        frame.time_base = time_base
        return frame


def _peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


# -- the forwarder process ---------------------------------------------------------------


def _forwarder_process(conn: Connection, mode: str) -> None:
    asyncio.run(_serve(conn, _ForwardNode() if mode == "forward" else _RelayNode()))


class _ForwardNode:
    def __init__(self) -> None:
        self.forwarder = Forwarder()

    async def publish(self, offer_sdp: str) -> tuple[str, list[str]]:
        answer = await self.forwarder.add_publisher(offer_sdp, publisher_id="pub")
        return answer.answer_sdp, [t.track_id for t in answer.tracks]

    async def subscribe(self, subscriber_id: str, track_ids: list[str]) -> str:
        return await self.forwarder.add_subscriber(subscriber_id, track_ids)

    async def answer(self, subscriber_id: str, answer_sdp: str) -> None:
        await self.forwarder.set_subscriber_answer(subscriber_id, answer_sdp)

    async def counters(self) -> tuple[int, int]:
        router = self.forwarder.router
        stats = [router.stats(track_id) for track_id in router.track_ids]
        return sum(s.packets_received for s in stats), sum(s.packets_forwarded for s in stats)

    async def close(self) -> None:
        await self.forwarder.close()


class _RelayNode:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.peers: dict[str, RTCPeerConnection] = {}

    async def publish(self, offer_sdp: str) -> tuple[str, list[str]]:
        pc = self.peers["pub"] = _peer()
        pc.on("track", lambda track: self.tracks.__setitem__(track.kind, track))
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp, list(self.tracks)

    async def subscribe(self, subscriber_id: str, track_ids: list[str]) -> str:
        pc = self.peers[subscriber_id] = _peer()
        for track_id in track_ids:
            pc.addTransceiver(self.relay.subscribe(self.tracks[track_id]), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def answer(self, subscriber_id: str, answer_sdp: str) -> None:
        pc = self.peers[subscriber_id]
        await pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def counters(self) -> tuple[int, int]:
        # aiortc's receiver stats keep one entry per receiver (the RTX SSRC overwrites the
        # media one), so what comes in is counted as the publisher transport's datagrams.
        received = sent = 0
        for name, pc in self.peers.items():
            report = await pc.getStats()
            for stats in report.values():
                if name == "pub" and stats.type == "transport":
                    received += stats.packetsReceived
                elif stats.type == "outbound-rtp":
                    sent += stats.packetsSent
        return received, sent

    async def close(self) -> None:
        for pc in self.peers.values():
            await pc.close()


async def _serve(conn: Connection, node: _ForwardNode | _RelayNode) -> None:
    try:
        while True:
            kind, *args = await asyncio.to_thread(conn.recv)
            if kind == "publish":
                conn.send(await node.publish(*args))
            elif kind == "subscribe":
                conn.send(await node.subscribe(*args))
            elif kind == "answer":
                await node.answer(*args)
                conn.send(None)
            elif kind == "measure":
                (seconds,) = args
                in0, out0 = await node.counters()
                cpu0, sys0, wall0 = time.process_time(), os.times().system, time.monotonic()
                await asyncio.sleep(seconds)
                cpu1, sys1, wall1 = time.process_time(), os.times().system, time.monotonic()
                in1, out1 = await node.counters()
                conn.send((cpu1 - cpu0, sys1 - sys0, in1 - in0, out1 - out0, wall1 - wall0))
            elif kind == "close":
                return
    finally:
        await node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    print(f"forwarder bench on {machine()}", flush=True)
    results = asyncio.run(run(args))
    for r in results:
        print(f"{r.name:28} {r.value:12,.1f} {r.unit:4} {r.note}")
    for r in results:
        print(r.line())


if __name__ == "__main__":
    main()
