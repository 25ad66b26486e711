"""`stagecast bench media`, tiny: the figures exist, are well formed, packets went through.

The suite runs for real, as a user runs it (`stagecast bench media`, in a subprocess):
forwarder, publisher and subscriber processes with real aiortc peers on loopback, and
the relay baseline. No timing is asserted; the pure parts are checked directly.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from array import array

import pytest

from forwarder.router import Router
from rtc.packets import CodecInfo, MediaPacket
from stagecast.bench.media import latencies
from stagecast.bench.mediaclients import stamp_key
from stagecast.bench.mediaforwarder import LatencyProbe, LatencyStamps
from stagecast.cli import BENCH_SUITES

HEADLINE = [
    "forward_us_per_packet",
    "forwarded_packets_per_core_s",
    "forward_latency_p50_ms",
    "forward_latency_p99_ms",
    "transcode_cpu_ratio",
]
RESULT_LINE = re.compile(r"RESULT (?P<name>[a-z0-9_]+) (?P<value>\S+) (?P<unit>\S+)")
OPUS = CodecInfo(kind="audio", mime_type="audio/opus", clock_rate=48000, channels=2)


@pytest.mark.timeout(300)
def test_tiny_run_reports_every_figure_and_forwards_packets() -> None:
    assert "media" in BENCH_SUITES
    command = [
        sys.executable, "-m", "stagecast.cli", "bench", "media",
        "--subscribers", "1,2", "--kinds", "video,audio",
        "--seconds", "2", "--warmup", "1", "--runs", "1", "--relay-max", "1",
        "--switches", "2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    figures: dict[str, float] = {}
    for line in lines:
        match = RESULT_LINE.fullmatch(line)
        assert match is not None, line
        value = float(match["value"])
        assert math.isfinite(value), line
        assert match["name"] not in figures, f"reported twice: {line}"
        figures[match["name"]] = value
    assert list(figures)[-len(HEADLINE) :] == HEADLINE  # the suite ends with them
    assert figures["forward_us_per_packet"] > 0
    assert figures["transcode_cpu_ratio"] > 0
    assert figures["simulcast_switch_ms_p99"] >= figures["simulcast_switch_ms_p50"] > 0
    for kind in ("video", "audio"):
        # one publisher packet reached each of the 2 legs, and the subscribers got them
        assert figures[f"forward_{kind}_n2_packets_out_per_s"] > 0
        assert figures[f"forward_{kind}_n2_delivered_ratio"] > 0.5
        assert figures[f"relay_{kind}_n1_packets_out_per_s"] > 0
        assert f"transcode_cpu_ratio_{kind}_n1" in figures
        assert f"forward_{kind}_n2_latency_p99_ms" in figures


class _Leg:
    def __init__(self, leg_id: str) -> None:
        self.leg_id = leg_id
        self.sent: list[int] = []

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        self.sent.append(sequence_number)
        return True


async def test_latency_probe_stamps_router_entry_and_each_leg() -> None:
    router = Router()
    probe = LatencyProbe(router)
    router.publish("pub:0", OPUS, request_keyframe=lambda: None)
    legs = [_Leg("a/pub:0"), _Leg("b/pub:0")]
    for leg in legs:
        router.subscribe("pub:0", leg)
    await router.forward("pub:0", MediaPacket(7, 0, 0, b"x", 5, 111))  # not recording
    probe.recording = True
    await router.forward("pub:0", MediaPacket(8, 960, 0, b"x", 5, 111))
    stamps = probe.take()
    assert all(len(leg.sent) == 2 for leg in legs)
    packets, sends = array("q"), array("q")
    packets.frombytes(stamps.packets)
    sends.frombytes(stamps.legs)
    key, entered, first, count = packets
    assert (key, first, count) == (stamp_key(5, 8), 0, 2)
    assert entered <= sends[0] <= sends[1]
    assert router.legs("pub:0") == ["a/pub:0", "b/pub:0"]


def test_latencies_pair_leg_sends_with_publisher_stamps() -> None:
    packets = array("q", [stamp_key(5, 8), 1_000_000, 0, 2, stamp_key(5, 9), 3_000_000, 2, 1])
    sends = array("q", [2_000_000, 2_500_000, 4_000_000])
    stamps = LatencyStamps(packets.tobytes(), sends.tobytes(), truncated=False)
    end_to_end, in_router, unmatched = latencies(stamps, {stamp_key(5, 8): 500_000})
    assert end_to_end == [1.5, 2.0]
    assert in_router == [1.0, 1.5, 1.0]
    assert unmatched == 1
    assert latencies(None, {}) == ([], [], 0)
