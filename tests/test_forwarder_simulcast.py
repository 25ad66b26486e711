"""Simulcast splicing: the VP8 descriptor, timestamp mapping and the per-leg munger."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from forwarder.errors import BadLayer
from forwarder.simulcast import (
    LayerMunger,
    MungedPacket,
    SenderReport,
    layer_of_rid,
    map_timestamp,
    ntp_to_seconds,
)
from rtc.errors import MalformedPayload
from rtc.packets import is_keyframe_start
from rtc.vp8 import parse_vp8_descriptor, rewrite_vp8_descriptor, vp8_keyframe_size

CLOCK = 90000
FRAME = 3000  # 30 frames per second at 90 kHz


def vp8(
    picture_id: int | None,
    tl0: int | None,
    *,
    key: bool,
    start: bool = True,
    short_pid: bool = False,
    tid: int | None = None,
    data: bytes = b"\xaa\xbb\xcc",
) -> bytes:
    """A VP8 RTP payload: descriptor (RFC 7741) plus a payload header byte and data."""
    ext = 0
    fields = b""
    if picture_id is not None:
        ext |= 0x80
        if short_pid:
            fields += bytes([picture_id & 0x7F])
        else:
            fields += bytes([0x80 | picture_id >> 8, picture_id & 0xFF])
    if tl0 is not None:
        ext |= 0x40
        fields += bytes([tl0])
    if tid is not None:
        ext |= 0x20
        fields += bytes([tid << 6 | 0x20])
    first = 0x80 | (0x10 if start else 0)
    header = 0x00 if key else 0x01
    return bytes([first, ext]) + fields + bytes([header]) + data


# -- rtc.vp8 -----------------------------------------------------------------------------


def test_parse_reads_every_field_and_the_keyframe_bit() -> None:
    d = parse_vp8_descriptor(vp8(0x1234, 77, key=True, tid=1))
    assert (d.picture_id, d.picture_id_bits, d.tl0picidx) == (0x1234, 15, 77)
    assert (d.temporal_id, d.layer_sync, d.header_size, d.keyframe) == (1, True, 6, True)
    delta = parse_vp8_descriptor(vp8(5, None, key=False, short_pid=True))
    assert (delta.picture_id, delta.picture_id_bits, delta.tl0picidx) == (5, 7, None)
    assert not delta.keyframe
    assert not parse_vp8_descriptor(vp8(5, 1, key=True, start=False)).keyframe
    plain = parse_vp8_descriptor(b"\x10\x00\x00")
    assert (plain.picture_id, plain.header_size, plain.keyframe) == (None, 1, True)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x90", b"\x90\x80", b"\x90\x80\x81", b"\x90\xc0\x81\x00", b"\x90\x20"],
)
def test_parse_names_a_payload_that_ends_inside_the_descriptor(payload: bytes) -> None:
    with pytest.raises(MalformedPayload) as caught:
        parse_vp8_descriptor(payload)
    assert caught.value.codec == "VP8"


def test_rewrite_replaces_ids_and_keeps_the_vp8_data() -> None:
    original = vp8(100, 9, key=True, tid=0, data=b"frame-bytes")
    d = parse_vp8_descriptor(original)
    out = rewrite_vp8_descriptor(original, d, picture_id=0x7FFF + 3, tl0picidx=300)
    again = parse_vp8_descriptor(out)
    assert (again.picture_id, again.tl0picidx, again.temporal_id) == (2, 44, 0)
    assert out.endswith(b"frame-bytes") and len(out) == len(original)
    assert again.keyframe and is_keyframe_start("VP8", out)


def test_rewrite_widens_a_7_bit_picture_id_to_15_bits() -> None:
    original = vp8(120, 3, key=False, short_pid=True, data=b"xyz")
    out = rewrite_vp8_descriptor(
        original, parse_vp8_descriptor(original), picture_id=1000, tl0picidx=None
    )
    again = parse_vp8_descriptor(out)
    assert (again.picture_id, again.picture_id_bits, again.tl0picidx) == (1000, 15, 3)
    assert len(out) == len(original) + 1 and out.endswith(b"\x01xyz")


# -- timestamps and rids -----------------------------------------------------------------


# A keyframe's first packet: descriptor (X, S, 15-bit picture id, TL0PICIDX), frame tag
# (keyframe), start code, then width and height with 2-bit scale hints on top.
KEYFRAME_640x360 = bytes.fromhex("90c0812c075002009d012a80426801") + b"data"


def test_a_vp8_keyframe_says_its_size() -> None:
    descriptor = parse_vp8_descriptor(KEYFRAME_640x360)
    assert descriptor.keyframe
    assert vp8_keyframe_size(KEYFRAME_640x360, descriptor) == (640, 360)  # scale 2 dropped
    plain = bytes.fromhex("105002009d012a4001f000")
    assert vp8_keyframe_size(plain, parse_vp8_descriptor(plain)) == (320, 240)


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("90c0812c075102009d012a80026801"),  # an inter frame
        bytes.fromhex("80c0812c075002009d012a80026801"),  # not a partition start
        bytes.fromhex("90c0812c075002009d012a80"),  # cut short
        bytes.fromhex("90c0812c075002009d010080026801"),  # no start code
        bytes.fromhex("90c0812c075002009d012a00006801"),  # zero width
    ],
)
def test_a_vp8_size_is_only_read_from_a_whole_keyframe_header(payload: bytes) -> None:
    assert vp8_keyframe_size(payload, parse_vp8_descriptor(payload)) is None


def test_map_timestamp_goes_through_the_wall_clock_and_wraps() -> None:
    low = SenderReport(ntp_seconds=1000.0, rtp_timestamp=0xFFFF_FF00)
    high = SenderReport(ntp_seconds=1000.5, rtp_timestamp=5000)
    # 0.1 s after low's report is 0.4 s before high's report.
    ts = (0xFFFF_FF00 + 9000) % (1 << 32)
    assert map_timestamp(ts, low, high, CLOCK) == (5000 - 36000) % (1 << 32)
    assert map_timestamp((5000 - 36000) % (1 << 32), high, low, CLOCK) == ts
    assert ntp_to_seconds(3 << 32 | 1 << 31) == 3.5


def test_rids_name_layers() -> None:
    assert [layer_of_rid(r) for r in ("q", "h", "f")] == [0, 1, 2]
    with pytest.raises(BadLayer):
        layer_of_rid("x")
    with pytest.raises(BadLayer):
        LayerMunger(clock_rate=CLOCK, first_sequence=0, first_timestamp=0).set_target(3)


# -- the munger over a simulated three-layer publisher -----------------------------------


@dataclass
class Layer:
    """One simulcast layer's own numbering, as a publisher would send it."""

    index: int
    seq: int
    ts: int
    pid: int
    tl0: int


@dataclass
class Publisher:
    """Three layers captured together: frame n is at n/30 s on every layer."""

    layers: list[Layer]
    frame: int = 0
    ntp_zero: float = 5000.0

    def reports(self) -> dict[int, SenderReport]:
        return {
            layer.index: SenderReport(self.ntp_zero + self.frame / 30, layer.ts)
            for layer in self.layers
        }

    def next_frame(self, keyframes: set[int]) -> list[tuple[int, int, int, bytes, bool]]:
        """Two packets per layer for the next frame: (layer, seq, ts, payload, keyframe)."""
        out = []
        for layer in self.layers:
            key = layer.index in keyframes
            for part in range(2):
                payload = vp8(layer.pid, layer.tl0, key=key, start=part == 0)
                out.append((layer.index, layer.seq, layer.ts, payload, key and part == 0))
                layer.seq = (layer.seq + 1) & 0xFFFF
            layer.ts = (layer.ts + FRAME) % (1 << 32)
            layer.pid = (layer.pid + 1) & 0x7FFF
            layer.tl0 = (layer.tl0 + 1) & 0xFF
        self.frame += 1
        return out


def three_layers() -> Publisher:
    return Publisher(
        [
            Layer(0, seq=65530, ts=4_294_960_000, pid=32760, tl0=250),
            Layer(1, seq=100, ts=123_456, pid=7, tl0=3),
            Layer(2, seq=40000, ts=2_000_000_000, pid=20000, tl0=128),
        ]
    )


def run(
    munger: LayerMunger,
    pub: Publisher,
    frames: int,
    *,
    keyframes: set[int] = frozenset(),  # type: ignore[assignment]
    with_reports: bool = True,
) -> list[tuple[int, MungedPacket]]:
    """Feed `frames` frames (keyframes on `keyframes` in the first); (layer, packet) sent."""
    sent = []
    for n in range(frames):
        now = pub.frame / 30
        reports = pub.reports() if with_reports else None
        for layer, seq, ts, payload, key in pub.next_frame(keyframes if n == 0 else set()):
            d = parse_vp8_descriptor(payload)
            out = munger.munge(
                layer, seq, ts, payload, keyframe=key, now=now, vp8=d, reports=reports
            )
            if out is not None:
                sent.append((layer, out))
    return sent


def assert_one_unbroken_stream(sent: list[tuple[int, MungedPacket]]) -> None:
    """What a decoder checks: consecutive sequence numbers, one frame step in timestamp,
    picture id and TL0PICIDX per frame, all across wrap-arounds. A switch may land on the
    new layer's copy of the frame just sent from the old one: its timestamp then moves on
    by one tick only (never back, never twice)."""
    for (_, a), (_, b) in itertools.pairwise(sent):
        assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
        da = parse_vp8_descriptor(a.payload)
        db = parse_vp8_descriptor(b.payload)
        assert da.picture_id is not None and db.picture_id is not None
        if db.start_of_partition:  # a new frame
            step = (b.timestamp - a.timestamp) % (1 << 32)
            assert step in ((1, FRAME) if b.switched else (FRAME,))
            assert db.picture_id == (da.picture_id + 1) & 0x7FFF
            assert db.tl0picidx == ((da.tl0picidx or 0) + 1) & 0xFF
        else:
            assert (b.timestamp, db.picture_id) == (a.timestamp, da.picture_id)


def test_a_leg_starts_at_a_keyframe_of_its_target_at_its_own_numbers() -> None:
    munger = LayerMunger(
        clock_rate=CLOCK, first_sequence=7, first_timestamp=1000, first_picture_id=50
    )
    assert munger.set_target(0) is True
    pub = three_layers()
    assert run(munger, pub, 3) == []  # no keyframe yet
    assert munger.needs_keyframe
    sent = run(munger, pub, 4, keyframes={0, 2})
    assert {layer for layer, _ in sent} == {0}
    first = sent[0][1]
    assert (first.sequence_number, first.timestamp, first.switched) == (7, 1000, True)
    assert parse_vp8_descriptor(first.payload).picture_id == 50
    assert not munger.needs_keyframe and munger.current == 0
    assert_one_unbroken_stream(sent)


@pytest.mark.parametrize("with_reports", [True, False])
def test_low_high_low_switches_at_keyframes_and_leaves_no_discontinuity(
    with_reports: bool,
) -> None:
    munger = LayerMunger(clock_rate=CLOCK, first_sequence=65534, first_timestamp=2**32 - 4000)
    pub = three_layers()
    munger.set_target(0)
    sent = run(munger, pub, 5, keyframes={0}, with_reports=with_reports)
    assert munger.set_target(2) is True
    # Until layer 2 has a keyframe the leg keeps layer 0; deltas of layer 2 are not sent.
    sent += run(munger, pub, 3, with_reports=with_reports)
    assert {layer for layer, _ in sent} == {0} and munger.current == 0
    sent += run(munger, pub, 5, keyframes={2}, with_reports=with_reports)
    assert munger.current == 2 and [layer for layer, _ in sent][-10:] == [2] * 10
    assert munger.set_target(0) is True
    sent += run(munger, pub, 3, keyframes={0}, with_reports=with_reports)
    assert munger.current == 0 and munger.switches == 3
    assert [p.switched for _, p in sent].count(True) == 3
    assert_one_unbroken_stream(sent)


def test_returning_to_the_current_layer_cancels_a_pending_switch() -> None:
    munger = LayerMunger(clock_rate=CLOCK, first_sequence=0, first_timestamp=0)
    pub = three_layers()
    munger.set_target(1)
    run(munger, pub, 1, keyframes={1})
    assert munger.set_target(2) is True
    assert munger.set_target(1) is False
    sent = run(munger, pub, 2, keyframes={2})
    assert {layer for layer, _ in sent} == {1} and munger.switches == 1


def test_sender_reports_place_a_layer_captured_later_on_the_leg_timeline() -> None:
    """Layer 2 lags layer 0 by 100 ms of capture: its keyframe maps 100 ms earlier than
    the elapsed-time guess, which the reports know and the clock does not."""
    munger = LayerMunger(clock_rate=CLOCK, first_sequence=0, first_timestamp=0)
    munger.set_target(0)
    low = SenderReport(100.0, 10_000)
    high = SenderReport(100.0, 777_000)
    key0 = vp8(1, 1, key=True)
    first = munger.munge(0, 1, 10_000 + 90_000, key0, keyframe=True, now=1.0, vp8=None)
    assert first is not None and first.timestamp == 0
    munger.set_target(2)
    # Sent 0.2 s later, but captured 0.1 s after layer 0's frame (wall clock 101.1 s).
    out = munger.munge(
        2,
        500,
        777_000 + 99_000,
        vp8(9, 9, key=True),
        keyframe=True,
        now=1.2,
        vp8=None,
        reports={0: low, 2: high},
    )
    assert out is not None and out.timestamp == 9_000
    # Reports that disagree with the elapsed time by more than half a second are ignored.
    munger.set_target(0)
    out = munger.munge(
        0,
        2,
        10_000 + 90_000 + 3_000_000,
        key0,
        keyframe=True,
        now=1.3,
        vp8=None,
        reports={0: low, 2: high},
    )
    assert out is not None and out.timestamp == 9_000 + 9_000


def test_reordered_packets_keep_their_place_and_stale_ones_are_dropped() -> None:
    munger = LayerMunger(clock_rate=CLOCK, first_sequence=100, first_timestamp=0)
    munger.set_target(1)
    key = vp8(1, 1, key=True)
    delta = vp8(2, 2, key=False)

    def send(layer: int, seq: int, keyframe: bool = False) -> int | None:
        payload = key if keyframe else delta
        out = munger.munge(
            layer, seq, 0, payload, keyframe=keyframe, now=0.0, vp8=parse_vp8_descriptor(payload)
        )
        return None if out is None else out.sequence_number

    assert [send(1, 10, True), send(1, 12), send(1, 11)] == [100, 102, 101]
    munger.set_target(0)
    assert send(0, 900, True) == 103
    assert send(1, 13) is None  # the old layer is no longer sent
    assert send(0, 899) is None  # from before the switch point
    assert munger.munge(0, 901, 0, b"", keyframe=False, now=0.0) is None  # padding
    assert send(0, 902) == 104  # no hole where the padding was


def test_pausing_stops_the_leg_and_resuming_continues_its_numbers() -> None:
    munger = LayerMunger(clock_rate=CLOCK, first_sequence=0, first_timestamp=0)
    pub = three_layers()
    munger.set_target(1)
    sent = run(munger, pub, 2, keyframes={1})
    assert munger.set_target(None) is False
    assert run(munger, pub, 4, keyframes={0, 1, 2}) == []
    assert munger.set_target(1) is True
    resumed = run(munger, pub, 2, keyframes={1})
    assert resumed[0][1].sequence_number == sent[-1][1].sequence_number + 1
    # Six frames of wall time passed: the timestamp says so.
    assert resumed[0][1].timestamp == sent[-1][1].timestamp + 5 * FRAME
    assert parse_vp8_descriptor(resumed[0][1].payload).picture_id == 2
