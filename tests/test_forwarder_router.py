"""The forwarder's pure core: sequence rewriting, keyframe detection and the router."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from forwarder.errors import DuplicateTrack, TrackNotFound
from forwarder.router import Router
from rtc.packets import (
    CodecInfo,
    DuplicateFilter,
    MediaPacket,
    SequenceRewriter,
    is_keyframe_start,
    red_primary,
    red_retyped,
)

VP8 = CodecInfo(kind="video", mime_type="video/VP8", clock_rate=90000)
OPUS = CodecInfo(kind="audio", mime_type="audio/opus", clock_rate=48000, channels=2)
# VP8 payload descriptors (RFC 7741): X=1, I=1 with a 15-bit picture id, S=1, PID=0,
# followed by the first byte of the VP8 payload header (P bit 0 = keyframe).
VP8_KEY_START = bytes([0x90, 0x80, 0x80, 0x01, 0x10]) + b"\x00" * 20
VP8_DELTA_START = bytes([0x90, 0x80, 0x80, 0x02, 0x11]) + b"\x00" * 20
VP8_CONTINUATION = bytes([0x80, 0x80, 0x80, 0x01]) + b"\x00" * 20


# -- SequenceRewriter --------------------------------------------------------------------


def test_rewriter_maps_onto_its_own_start_and_keeps_order() -> None:
    rw = SequenceRewriter(first=1000)
    assert [rw.rewrite(s) for s in (50, 51, 53, 52)] == [1000, 1001, 1003, 1002]


def test_rewriter_restart_closes_the_gap_and_drops_stale_packets() -> None:
    rw = SequenceRewriter(first=10)
    assert [rw.rewrite(s) for s in (100, 101, 102)] == [10, 11, 12]
    rw.restart()  # a mute: packets 103..499 were never forwarded
    assert rw.rewrite(500) == 13
    assert rw.rewrite(501) == 14
    assert rw.rewrite(102) is None  # from before the restart
    assert rw.rewrite(501) is None  # duplicate of the newest


def test_rewriter_wraps_around_16_bits() -> None:
    rw = SequenceRewriter(first=0xFFFE)
    assert [rw.rewrite(s) for s in (7, 8, 9, 10)] == [0xFFFE, 0xFFFF, 0, 1]
    rw2 = SequenceRewriter(first=5)
    assert [rw2.rewrite(s) for s in (0xFFFF, 0, 1)] == [5, 6, 7]


def test_rewriter_skips_in_order_padding_without_a_hole() -> None:
    rw = SequenceRewriter(first=200)
    assert rw.rewrite(10) == 200
    assert rw.skip(11) is True
    assert rw.rewrite(12) == 201
    assert rw.skip(20) is False  # out of order: must be forwarded instead
    assert rw.rewrite(11) is None  # the skipped one arriving again is stale


def test_duplicate_filter_remembers_recent_sequence_numbers() -> None:
    seen = DuplicateFilter(size=8)
    assert [seen.is_repeat(s) for s in (1, 2, 1, 3, 2)] == [False, False, True, False, True]
    assert seen.is_repeat(9) is False  # takes slot 1 over
    assert seen.is_repeat(1) is False  # too old to remember: forwarded (the rewriter decides)
    with pytest.raises(ValueError):
        DuplicateFilter(size=6)


# -- keyframe detection ------------------------------------------------------------------


def test_vp8_keyframe_start() -> None:
    assert is_keyframe_start("VP8", VP8_KEY_START)
    assert not is_keyframe_start("VP8", VP8_DELTA_START)
    assert not is_keyframe_start("VP8", VP8_CONTINUATION)
    assert is_keyframe_start("VP8", bytes([0x10, 0x00]))  # no extension, keyframe
    assert not is_keyframe_start("VP8", b"")


def test_h264_keyframe_start() -> None:
    sps, idr, non_idr = b"\x67\x42", b"\x65\x88", b"\x41\x9a"
    assert is_keyframe_start("H264", sps)
    assert is_keyframe_start("H264", idr)
    assert not is_keyframe_start("H264", non_idr)
    stap_a = b"\x18" + len(sps).to_bytes(2, "big") + sps + len(idr).to_bytes(2, "big") + idr
    assert is_keyframe_start("H264", stap_a)
    assert is_keyframe_start("H264", b"\x7c\x85")  # FU-A, start bit, IDR
    assert not is_keyframe_start("H264", b"\x7c\x05")  # FU-A continuation
    assert not is_keyframe_start("H264", b"\x7c\x81")  # FU-A start of a non-IDR slice


def test_vp9_keyframe_start() -> None:
    assert is_keyframe_start("VP9", bytes([0x08, 0x00]))  # B, not predicted, no layers
    assert not is_keyframe_start("VP9", bytes([0x48]))  # B but inter-predicted (P)
    assert not is_keyframe_start("VP9", bytes([0x00]))  # not the start of a frame
    # I (15-bit picture id) + L: layer byte after the picture id; SID 0 starts, SID 1 not
    assert is_keyframe_start("VP9", bytes([0xA8, 0x81, 0x23, 0x00, 0x00]))
    assert not is_keyframe_start("VP9", bytes([0xA8, 0x81, 0x23, 0x02, 0x00]))
    # 7-bit picture id, then SID 0 with TID 2
    assert is_keyframe_start("VP9", bytes([0xA8, 0x05, 0x40, 0x00]))
    assert not is_keyframe_start("VP9", bytes([0xA8, 0x81]))  # truncated descriptor
    assert not is_keyframe_start("VP9", b"")


def test_av1_keyframe_start() -> None:
    assert is_keyframe_start("AV1", bytes([0x18, 0x0A]))  # N set, W=1, Z clear
    assert not is_keyframe_start("AV1", bytes([0x10, 0x32]))  # a delta frame: N clear
    assert not is_keyframe_start("AV1", bytes([0x88]))  # N set but continues an OBU (Z)
    assert not is_keyframe_start("AV1", b"")


def test_audio_packets_are_always_a_starting_point() -> None:
    assert is_keyframe_start("OPUS", b"\x01\x02")


# -- Router ------------------------------------------------------------------------------


@dataclass
class FakeLeg:
    leg_id: str
    sent: list[tuple[int, int]] = field(default_factory=list)
    """(incoming sequence number, outgoing sequence number) of every packet sent."""
    up: bool = True

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        if self.up:
            self.sent.append((packet.sequence_number, sequence_number))
        return self.up


class FakeTimers:
    """A clock and a scheduler the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pending: list[tuple[float, Callable[[], None], FakeHandle]] = []

    def clock(self) -> float:
        return self.now

    def schedule(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        self.pending.append((self.now + delay, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [p for p in self.pending if p[0] <= self.now]
        self.pending = [p for p in self.pending if p[0] > self.now]
        for _, callback, handle in due:
            if not handle.cancelled:
                callback()


class FakeHandle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Upstream:
    def __init__(self) -> None:
        self.requests = 0

    def __call__(self) -> None:
        self.requests += 1


def packet(seq: int, payload: bytes = VP8_CONTINUATION) -> MediaPacket:
    return MediaPacket(
        sequence_number=seq,
        timestamp=seq * 3000,
        marker=0,
        payload=payload,
        ssrc=1234,
        payload_type=96,
    )


def make_router() -> tuple[Router, FakeTimers]:
    timers = FakeTimers()
    router = Router(
        keyframe_interval=0.5,
        clock=timers.clock,
        schedule=timers.schedule,
        first_sequence=lambda: 1000,
    )
    return router, timers


async def test_audio_goes_to_every_leg_with_each_legs_own_sequence() -> None:
    router, _ = make_router()
    router.publish("mic", OPUS, request_keyframe=Upstream())
    a, b = FakeLeg("a/mic"), FakeLeg("b/mic")
    router.subscribe("mic", a)
    for seq in (1, 2):
        await router.forward("mic", packet(seq, b"opus"))
    router.subscribe("mic", b)
    assert await router.forward("mic", packet(3, b"opus")) == 2
    assert a.sent == [(1, 1000), (2, 1001), (3, 1002)]
    assert b.sent == [(3, 1000)]
    assert router.stats("mic").packets_forwarded == 4


async def test_video_leg_starts_at_a_keyframe_and_subscribing_asks_for_one() -> None:
    router, timers = make_router()
    upstream = Upstream()
    router.publish("cam", VP8, request_keyframe=upstream)
    leg = FakeLeg("a/cam")
    router.subscribe("cam", leg)
    assert upstream.requests == 1  # immediately on subscription
    await router.forward("cam", packet(7, VP8_DELTA_START))
    await router.forward("cam", packet(8))
    assert leg.sent == []
    timers.advance(0.5)  # still waiting: the deferred request went out at the window end
    assert upstream.requests == 2
    await router.forward("cam", packet(9, VP8_KEY_START))
    await router.forward("cam", packet(10))
    assert leg.sent == [(9, 1000), (10, 1001)]


async def test_keyframe_requests_are_rate_limited_and_coalesced() -> None:
    router, timers = make_router()
    upstream = Upstream()
    router.publish("cam", VP8, request_keyframe=upstream)
    assert router.request_keyframe("cam") is True
    for _ in range(20):  # a burst of subscriber PLIs and joiners within the window
        timers.advance(0.01)
        assert router.request_keyframe("cam") is False
        router.subscribe("cam", FakeLeg(f"leg{timers.now}"))
    assert upstream.requests == 1
    assert len(timers.pending) == 1  # one deferred request, not twenty
    timers.advance(0.5)
    assert upstream.requests == 2
    assert router.stats("cam").keyframe_requests == 2
    timers.advance(5)
    assert router.request_keyframe("cam") is True
    assert upstream.requests == 3


async def test_audio_tracks_never_request_keyframes() -> None:
    router, _ = make_router()
    upstream = Upstream()
    router.publish("mic", OPUS, request_keyframe=upstream)
    router.subscribe("mic", FakeLeg("a/mic"))
    assert router.request_keyframe("mic") is False
    assert upstream.requests == 0


async def test_muted_tracks_forward_nothing_and_resume_without_a_gap() -> None:
    router, timers = make_router()
    upstream = Upstream()
    router.publish("cam", VP8, request_keyframe=upstream)
    leg = FakeLeg("a/cam")
    router.subscribe("cam", leg)
    await router.forward("cam", packet(1, VP8_KEY_START))
    await router.forward("cam", packet(2))
    router.set_muted("cam", True)
    for seq in range(3, 50):
        assert await router.forward("cam", packet(seq)) == 0
    stats = router.stats("cam")
    assert stats.muted and stats.packets_dropped_muted == 47 and stats.packets_forwarded == 2
    timers.advance(1)
    router.set_muted("cam", False)
    assert upstream.requests == 2  # unmuting asks for a keyframe to restart on
    await router.forward("cam", packet(50))  # not a keyframe: the leg waits
    await router.forward("cam", packet(51, VP8_KEY_START))
    assert leg.sent == [(1, 1000), (2, 1001), (51, 1002)]


async def test_padding_only_packets_are_not_forwarded() -> None:
    router, _ = make_router()
    router.publish("cam", VP8, request_keyframe=Upstream())
    leg = FakeLeg("a/cam")
    router.subscribe("cam", leg)
    await router.forward("cam", packet(1, VP8_KEY_START))
    await router.forward("cam", packet(2, b""))
    await router.forward("cam", packet(3))
    assert leg.sent == [(1, 1000), (3, 1001)]


async def test_unsubscribe_unpublish_and_leave_clean_up() -> None:
    router, timers = make_router()
    router.publish("cam", VP8, request_keyframe=Upstream())
    router.publish("mic", OPUS, request_keyframe=Upstream())
    a_cam, a_mic, b_cam = FakeLeg("a/cam"), FakeLeg("a/mic"), FakeLeg("b/cam")
    router.subscribe("cam", a_cam)
    router.subscribe("mic", a_mic)
    router.subscribe("cam", b_cam)  # inside the window: a deferred request is pending
    assert router.unsubscribe("cam", "b/cam") is True
    assert router.unsubscribe("cam", "b/cam") is False
    assert router.legs("cam") == ["a/cam"]
    # leave: a's legs go from every track
    assert router.remove_leg("a/cam") + router.remove_leg("a/mic") == 2
    assert router.legs("cam") == [] and router.legs("mic") == []
    router.subscribe("cam", b_cam)
    assert router.unpublish("cam") == ["b/cam"]
    assert all(handle.cancelled for _, _, handle in timers.pending)
    assert await router.forward("cam", packet(1, VP8_KEY_START)) == 0
    with pytest.raises(TrackNotFound):
        router.subscribe("cam", b_cam)
    router.close()
    router.close()
    assert router.track_ids == []


async def test_a_repeated_packet_is_forwarded_once() -> None:
    router, _ = make_router()
    router.publish("mic", OPUS, request_keyframe=Upstream())
    leg = FakeLeg("a/mic")
    router.subscribe("mic", leg)
    for seq in (1, 2, 3, 2, 4, 1):  # retransmissions that crossed the originals
        await router.forward("mic", packet(seq, b"opus"))
    assert leg.sent == [(1, 1000), (2, 1001), (3, 1002), (4, 1003)]
    assert router.stats("mic").packets_repeated == 2


async def test_a_leg_that_is_down_is_not_counted() -> None:
    router, _ = make_router()
    router.publish("mic", OPUS, request_keyframe=Upstream())
    router.subscribe("mic", FakeLeg("a/mic", up=False))
    router.subscribe("mic", FakeLeg("b/mic"))
    assert await router.forward("mic", packet(1, b"opus")) == 1


def test_duplicate_and_unknown_tracks_are_named_errors() -> None:
    router, _ = make_router()
    router.publish("cam", VP8, request_keyframe=Upstream())
    with pytest.raises(DuplicateTrack):
        router.publish("cam", VP8, request_keyframe=Upstream())
    with pytest.raises(TrackNotFound):
        router.set_muted("nope", True)
    with pytest.raises(TrackNotFound):
        router.stats("nope")


# -- RED (RFC 2198) ------------------------------------------------------------------------


def _red(primary: bytes, *older: bytes, pt: int = 111) -> bytes:
    headers = b"".join(
        bytes([0x80 | pt]) + ((960 * (k + 1)) << 10 | len(block)).to_bytes(3, "big")
        for k, block in enumerate(older)
    )
    return headers + bytes([pt]) + b"".join(older) + primary


def test_red_primary_is_the_newest_block() -> None:
    assert red_primary(_red(b"new", b"old-1", b"old-2")) == b"new"
    assert red_primary(_red(b"only")) == b"only"
    assert red_primary(b"") is None
    assert red_primary(bytes([0x80 | 111, 0, 0])) is None  # a header cut short
    assert red_primary(_red(b"new", b"old")[:6]) is None  # blocks longer than the payload


def test_red_block_payload_types_are_rewritten_for_a_leg() -> None:
    payload = _red(b"new", b"old", pt=111)
    retyped = red_retyped(payload, 96)
    assert retyped == _red(b"new", b"old", pt=96)
    assert retyped is not None and red_primary(retyped) == b"new"
    assert red_retyped(b"\x80", 96) is None
