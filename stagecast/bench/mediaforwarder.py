"""The measured side of `stagecast bench media`: a forwarder process and what it counts.

`forwarder_process` runs one node in its own process, driven over a pipe by the suite
(`stagecast.bench.media`), while the publisher and the subscribers run in other
processes, so this process's CPU time (`getrusage`, all threads, user + system) is the
forwarder's alone. Two nodes:

- `ForwardNode`: `forwarder.node.Forwarder`, packets passed through (no decode, no encode).
  Its router is instrumented from outside, through its public methods: `forward` stamps
  when a publisher packet reaches the router and when the router is done with it, and
  each subscribed leg is wrapped so that each send is stamped after the leg's SRTP and
  socket write (CLOCK_MONOTONIC, comparable with the publisher's send stamps in another
  process); the router's C fan-out stamps its own sends into the same array
  (`Router.send_stamps`). The publisher connection's datagrams are stamped when the
  socket read hands them to aioice (`tap_datagrams_received`), so a packet's latency
  splits into waiting to be read, being received, and its own fan-out.
- `RelayNode`: aiortc's `MediaRelay`, the decode/re-encode baseline: one decoder per
  published track, one real encoder per subscriber and track (VP8 pinned to the
  publisher's bitrate, so both deliver the same ~300 packets/s), frames dropped rather
  than queued when an encoder falls behind.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import resource
import time
from array import array
from collections.abc import Awaitable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import vpx
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import is_rtcp

from forwarder.node import Forwarder
from forwarder.router import Leg, Router
from forwarder.voice import RoomVoices
from processes.runtime import tune_gc
from rtc import fanout
from rtc.aiortc_adapter import tap_datagrams_received
from rtc.packets import MediaPacket, is_keyframe_start
from stagecast.bench.workers import Handler, serve, set_priority

MAX_LEG_STAMPS = 4_000_000
"""Leg send stamps kept per window (32 MB); recording stops there (`truncated`)."""
SUBSCRIBE_CONCURRENCY = 25


@dataclass(frozen=True, slots=True)
class Window:
    """What the node did during one measured window."""

    wall_s: float
    user_s: float
    """CPU seconds in user space, all threads of the process."""
    system_s: float
    """CPU seconds in the kernel (the UDP sends and receives on loopback included)."""
    packets_in: int
    """RTP packets from the publisher (relay: datagrams on the publisher's transport)."""
    packets_out: int
    """RTP packets sent, summed over the legs (relay: outbound RTP of every subscriber)."""
    involuntary_switches: int
    """Times the OS took the CPU away from the process (a sign of a contended machine)."""
    niceness: int
    """The process's nice value (the suite asks for a raised priority; needs privileges)."""
    helper_legs: int = 0
    """Legs the C fan-out's helper thread sent (`rtc.fanout.shared_legs`)."""

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


PACKET_FIELDS = 7
"""Integers per packet in `LatencyStamps.packets`."""


@dataclass(frozen=True, slots=True)
class LatencyStamps:
    """Per forwarded packet: key (SSRC << 16 | sequence number), router entry, leg sends.

    ``packets`` holds `PACKET_FIELDS` integers per packet: key, entry ns, index of its
    first leg stamp in ``legs``, number of leg stamps, ns when the router was done with
    it, its RTP timestamp (a frame's packets share it: one burst) and 1 if it starts a
    keyframe. ``reads`` holds (key, ns) pairs: when the packet's datagram was read from
    the socket (empty when the tap could not be installed).
    """

    packets: bytes
    legs: bytes
    truncated: bool
    reads: bytes = b""


class _Node(Protocol):
    async def publish(self, offer_sdp: str) -> tuple[str, list[str]]: ...
    async def subscribe(self, subscriber_id: str, track_ids: list[str]) -> str: ...
    async def answer(self, subscriber_id: str, answer_sdp: str) -> None: ...
    def legs(self) -> int: ...
    async def counters(self) -> tuple[int, int]: ...
    def start_recording(self) -> None: ...
    def stop_recording(self) -> None: ...
    def latency(self) -> LatencyStamps | None: ...
    async def close(self) -> None: ...


class LatencyProbe:
    """Stamps a router's packets on entry and on each leg's send, while recording.

    Installed through the router's public methods before any track is published: the
    forwarder binds `router.forward` when a publisher is added and calls
    `router.subscribe` when a leg is ready. A packet's sends run without a suspension
    point (UDP writes do not block), so its leg stamps are contiguous.
    """

    def __init__(self, router: Router) -> None:
        self._router = router
        self._recording = False
        self.truncated = False
        self.packets = array("q")
        self.sends = array("q")
        self.reads = array("q")
        forward = router.forward
        subscribe = router.subscribe
        now = time.monotonic_ns

        async def timed_forward(track_id: str, packet: MediaPacket) -> int:
            if not self.recording:
                return await forward(track_id, packet)
            entered = now()
            first = len(self.sends)
            sent = await forward(track_id, packet)
            done = now()
            key = packet.ssrc << 16 | packet.sequence_number
            keyframe = bool(packet.payload) and is_keyframe_start(
                router.codec(track_id).name, packet.payload
            )
            self.packets.extend(
                (key, entered, first, len(self.sends) - first, done, packet.timestamp, keyframe)
            )
            if len(self.sends) >= MAX_LEG_STAMPS:
                self.recording, self.truncated = False, True
            return sent

        def timed_subscribe(track_id: str, leg: Leg) -> None:
            subscribe(track_id, _TimedLeg(leg, self))

        setattr(router, "forward", timed_forward)  # noqa: B010 - instance override
        setattr(router, "subscribe", timed_subscribe)  # noqa: B010

    def datagram_read(self, data: bytes) -> None:
        """Stamp an RTP datagram (still SRTP: its header is in the clear) as read now."""
        if self._recording and len(data) >= 12 and 127 < data[0] < 192 and not is_rtcp(data):
            key = int.from_bytes(data[8:12], "big") << 16 | int.from_bytes(data[2:4], "big")
            self.reads.extend((key, time.monotonic_ns()))

    @property
    def recording(self) -> bool:
        return self._recording

    @recording.setter
    def recording(self, recording: bool) -> None:
        self._recording = recording
        self._router.send_stamps = self.sends if recording else None

    def take(self) -> LatencyStamps:
        stamps = LatencyStamps(
            self.packets.tobytes(), self.sends.tobytes(), self.truncated, self.reads.tobytes()
        )
        self.packets, self.sends, self.reads = array("q"), array("q"), array("q")
        self.truncated = False
        self.recording = self._recording  # the router stamps into the new array
        return stamps


class _TimedLeg:
    """A router leg whose successful sends are stamped while the probe records."""

    __slots__ = ("_leg", "_probe", "fast", "leg_id")

    def __init__(self, leg: Leg, probe: LatencyProbe) -> None:
        self._leg = leg
        self._probe = probe
        self.leg_id = leg.leg_id
        self.fast = getattr(leg, "fast", None)
        """The leg's C fan-out: the router stamps its sends (`Router.send_stamps`)."""

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        sent = await self._leg.send(packet, sequence_number)
        probe = self._probe
        if sent and probe.recording:
            probe.sends.append(time.monotonic_ns())
        return sent


class ForwardNode:
    """The forwarder under test, optionally with a `LatencyProbe` on its router."""

    def __init__(self, *, latency: bool) -> None:
        self.forwarder = Forwarder()
        self.probe = LatencyProbe(self.forwarder.router) if latency else None
        # as the forwarder service wires it: audio levels feed the active speaker detector
        self.voices = RoomVoices("bench")
        self.forwarder.on_audio_level = self.voices.observe

    async def publish(self, offer_sdp: str) -> tuple[str, list[str]]:
        answer = await self.forwarder.add_publisher(offer_sdp, publisher_key="publisher")
        if self.probe is not None:
            transports = {
                t.receiver.transport
                for pc in self.forwarder.peer_connections
                for t in pc.getTransceivers()
            }  # the publisher's only (bundled): no subscriber yet
            for transport in transports:
                tap_datagrams_received(transport, self.probe.datagram_read)
        for track in answer.tracks:
            if track.kind == "audio":
                self.voices.publish(track.track_id, "bench", "publisher", muted=False)
        return answer.answer_sdp, [t.track_id for t in answer.tracks]

    async def subscribe(self, subscriber_id: str, track_ids: list[str]) -> str:
        return await self.forwarder.add_subscriber(subscriber_id, track_ids)

    async def answer(self, subscriber_id: str, answer_sdp: str) -> None:
        await self.forwarder.set_subscriber_answer(subscriber_id, answer_sdp)

    def legs(self) -> int:
        router = self.forwarder.router
        return sum(router.stats(track_id).subscribers for track_id in router.track_ids)

    async def counters(self) -> tuple[int, int]:
        router = self.forwarder.router
        stats = [router.stats(track_id) for track_id in router.track_ids]
        return sum(s.packets_received for s in stats), sum(s.packets_forwarded for s in stats)

    def start_recording(self) -> None:
        if self.probe is not None:
            self.probe.take()
            self.probe.recording = True

    def stop_recording(self) -> None:
        if self.probe is not None:
            self.probe.recording = False

    def latency(self) -> LatencyStamps | None:
        return self.probe.take() if self.probe is not None else None

    async def close(self) -> None:
        await self.forwarder.close()


class RelayNode:
    """The decode/re-encode baseline: aiortc's `MediaRelay`, one encoder per subscriber."""

    def __init__(self, *, video_bitrate: int) -> None:
        # aiortc's VP8 encoder starts at DEFAULT_BITRATE and clamps to MAX_BITRATE (1.5
        # Mbit/s): pin both to the publisher's rate, in this process only.
        vpx.DEFAULT_BITRATE = vpx.MAX_BITRATE = video_bitrate
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.peers: dict[str, RTCPeerConnection] = {}

    async def publish(self, offer_sdp: str) -> tuple[str, list[str]]:
        pc = self.peers["publisher"] = _peer()
        pc.on("track", lambda track: self.tracks.__setitem__(track.kind, track))
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp, list(self.tracks)

    async def subscribe(self, subscriber_id: str, track_ids: list[str]) -> str:
        pc = self.peers[subscriber_id] = _peer()
        for track_id in track_ids:
            track = self.relay.subscribe(self.tracks[track_id], buffered=False)
            pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def answer(self, subscriber_id: str, answer_sdp: str) -> None:
        pc = self.peers[subscriber_id]
        await pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    def legs(self) -> int:
        return sum(
            len(pc.getTransceivers())
            for name, pc in self.peers.items()
            if name != "publisher" and pc.connectionState == "connected"
        )

    async def counters(self) -> tuple[int, int]:
        # aiortc's receiver stats keep one entry per receiver (the RTX SSRC overwrites the
        # media one), so what comes in is counted as the publisher transport's datagrams.
        received = sent = 0
        for name, pc in self.peers.items():
            report = await pc.getStats()
            for stats in report.values():
                if name == "publisher" and stats.type == "transport":
                    received += stats.packetsReceived
                elif stats.type == "outbound-rtp":
                    sent += stats.packetsSent
        return received, sent

    def start_recording(self) -> None:
        pass

    def stop_recording(self) -> None:
        pass

    def latency(self) -> LatencyStamps | None:
        return None

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.peers.values()), return_exceptions=True)


def _peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def measure(node: _Node, seconds: float, profile_path: str | None = None) -> Window:
    """Counters and this process's CPU time over `seconds`, read at the same instants.

    With `profile_path`, cProfile runs during the window and its stats are written there
    (the CPU figures of such a window include the profiler's own large overhead).
    """
    in0, out0 = await node.counters()
    _, helper0 = fanout.shared_legs()
    profiler = cProfile.Profile() if profile_path else None
    node.start_recording()
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    node.stop_recording()
    in1, out1 = await node.counters()
    _, helper1 = fanout.shared_legs()
    if profiler is not None and profile_path:
        profiler.dump_stats(profile_path)
    return Window(
        wall_s=wall1 - wall0,
        user_s=usage1.ru_utime - usage0.ru_utime,
        system_s=usage1.ru_stime - usage0.ru_stime,
        packets_in=in1 - in0,
        packets_out=out1 - out0,
        involuntary_switches=usage1.ru_nivcsw - usage0.ru_nivcsw,
        niceness=os.getpriority(os.PRIO_PROCESS, 0),
        helper_legs=helper1 - helper0,
    )


def forwarder_process(
    conn: Connection,
    mode: str,
    latency: bool,
    video_bitrate: int,
    niceness: int,
    lifetime: float,
) -> None:
    """Worker entry: serve one node ("forward" or "relay") until told to close.

    `niceness` is set first, so every thread of the node runs at that priority.
    """
    set_priority(niceness)
    asyncio.run(_serve(conn, mode, latency, video_bitrate, lifetime))


async def _serve(
    conn: Connection, mode: str, latency: bool, video_bitrate: int, lifetime: float
) -> None:
    node: _Node = (
        ForwardNode(latency=latency)
        if mode == "forward"
        else RelayNode(video_bitrate=video_bitrate)
    )
    tune_gc()  # as the services do once started
    limit = asyncio.Semaphore(SUBSCRIBE_CONCURRENCY)

    async def bounded(call: Awaitable[Any]) -> Any:
        async with limit:
            return await call

    async def subscribe_many(subscriber_ids: list[str], track_ids: list[str]) -> list[str]:
        offers = [bounded(node.subscribe(s, track_ids)) for s in subscriber_ids]
        return list(await asyncio.gather(*offers))

    async def answer_many(answers: list[tuple[str, str]]) -> None:
        await asyncio.gather(*(bounded(node.answer(s, sdp)) for s, sdp in answers))

    async def legs() -> int:
        return node.legs()

    async def window(seconds: float, profile_path: str | None) -> Window:
        return await measure(node, seconds, profile_path)

    async def stamps() -> LatencyStamps | None:
        return node.latency()

    handlers: dict[str, Handler] = {
        "publish": node.publish,
        "subscribe_many": subscribe_many,
        "answer_many": answer_many,
        "legs": legs,
        "measure": window,
        "latency": stamps,
    }
    await serve(conn, handlers, lifetime=lifetime, on_close=node.close)
