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
from rtc import fanout
from rtc.packets import CodecInfo, MediaPacket
from stagecast.bench import fanoutcost
from stagecast.bench.media import breakdown, latencies
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
        # the publisher's datagrams were stamped when read: receiving them takes time
        assert figures[f"forward_{kind}_n2_receive_us_p50"] > 0
        assert figures[f"forward_{kind}_n2_burst_packets_max"] >= 1


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
    key, entered, first, count, done, timestamp, keyframe = packets
    assert (key, first, count, timestamp, keyframe) == (stamp_key(5, 8), 0, 2, 960, 1)
    assert entered <= sends[0] <= sends[1] <= done  # (audio: every packet starts afresh)
    probe.datagram_read(b"\x80\x6f" + (8).to_bytes(2, "big") + bytes(4) + (5).to_bytes(4, "big"))
    probe.datagram_read(b"\x80\xc8" + bytes(10))  # RTCP (a sender report): not stamped
    probe.datagram_read(b"\x17" + bytes(20))  # DTLS: not stamped
    reads = array("q")
    reads.frombytes(probe.take().reads)
    assert len(reads) == 2 and reads[0] == stamp_key(5, 8)
    assert router.legs("pub:0") == ["a/pub:0", "b/pub:0"]


def test_latencies_pair_leg_sends_with_publisher_stamps() -> None:
    packets = array(
        "q",
        [
            *(stamp_key(5, 8), 1_000_000, 0, 2, 2_600_000, 0, 0),
            *(stamp_key(5, 9), 3_000_000, 2, 1, 4_100_000, 0, 0),
        ],
    )
    sends = array("q", [2_000_000, 2_500_000, 4_000_000])
    stamps = LatencyStamps(packets.tobytes(), sends.tobytes(), truncated=False)
    end_to_end, in_router, unmatched = latencies(stamps, {stamp_key(5, 8): 500_000})
    assert end_to_end == [1.5, 2.0]
    assert in_router == [1.0, 1.5, 1.0]
    assert unmatched == 1
    assert latencies(None, {}) == ([], [], 0)


def test_breakdown_splits_each_latency_and_groups_packets_by_burst() -> None:
    """Two frames: a 2-packet keyframe whose second packet queues behind the first one's
    fan-out, then a 1-packet delta frame that waits for nothing but the loop. Each
    pair's parts add up to its latency (ms here: 1 ms = 1,000,000 ns)."""
    ms = 1_000_000
    # key, entry, first leg stamp, leg stamps, done, RTP timestamp, keyframe start
    rows = [
        [stamp_key(5, 1), 2 * ms, 0, 2, 5 * ms, 3000, 1],  # read at 1, legs at 3 and 4
        [stamp_key(5, 2), 7 * ms, 2, 2, 9 * ms, 3000, 0],  # read at 6, legs at 8 and 9
        [stamp_key(5, 3), 22 * ms, 4, 1, 24 * ms, 6000, 0],  # read at 21, leg at 23
    ]
    packets = array("q", [value for row in rows for value in row])
    sends = array("q", [3 * ms, 4 * ms, 8 * ms, 9 * ms, 23 * ms])
    reads = array("q", [stamp_key(5, 1), 1 * ms, stamp_key(5, 2), 6 * ms, stamp_key(5, 3), 21 * ms])
    published = {stamp_key(5, 1): 0, stamp_key(5, 2): 0, stamp_key(5, 3): 20 * ms}
    stamps = LatencyStamps(packets.tobytes(), sends.tobytes(), False, reads.tobytes())
    found = breakdown(stamps, published)
    assert found is not None
    assert sorted(found.burst_packets) == [1, 2] and found.keyframes == 1
    assert found.keyframe_ms == [3.0, 4.0, 8.0, 9.0]
    assert found.delta_ms == [3.0]
    assert found.receive_us == [1000.0, 1000.0, 1000.0]
    assert found.service_us == [4000.0, 3000.0, 3000.0]
    # the largest latency, 9 ms: 4 ms behind packet 1 (read 1 -> done 5), 2 ms of loop
    # (0 -> 1 and 5 -> 6), 1 ms received, 2 ms of its own fan-out
    assert found.tail_ms == {"queue": 4.0, "loop": 2.0, "receive": 1.0, "fanout": 2.0}
    total = sum(found.mean_ms.values())
    assert abs(total - (3 + 4 + 8 + 9 + 3) / 5) < 1e-9
    assert breakdown(None, {}) is None


async def test_fanoutcost_forwards_every_packet_to_every_leg_through_c() -> None:
    """The in-process fan-out measure runs its legs through C only (its legs' Python path
    raises) and reports each figure."""
    figures = await fanoutcost.measure(legs=4, packets=fanoutcost.WARMUP + 20)
    assert set(figures) == {"fan_wall_us_p50", "fan_wall_us_p99", "fan_cpu_us_p50", "fan_threads"}
    assert figures["fan_wall_us_p99"] >= figures["fan_wall_us_p50"] > 0
    assert figures["fan_threads"] == fanout.threads()  # the setting (auto: 2 on 2 cores)
