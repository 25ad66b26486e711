"""A simulcast track in the router: a layer per leg, keyframe requests, dynacast wants."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from forwarder.layers import DEFAULT_LAYERS, Quality, announced_layers
from forwarder.router import Router
from forwarder.simulcast import LAYER_RIDS, SenderReport
from forwarder.simulcast_track import LAYER_TIMEOUT, LayerSource, SimulcastTrack
from rtc.packets import CodecInfo, MediaPacket
from rtc.vp8 import parse_vp8_descriptor

VP8 = CodecInfo(kind="video", mime_type="video/VP8", clock_rate=90000)


@dataclass
class Leg:
    leg_id: str
    sent: list[tuple[str, MediaPacket, int]] = field(default_factory=list)

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        assert packet.rid is not None
        self.sent.append((packet.rid, packet, sequence_number))
        return True

    @property
    def rids(self) -> list[str]:
        return [rid for rid, _, _ in self.sent]


class Publisher:
    """Three VP8 layers at 30 frames per second; records the keyframe requests it gets."""

    def __init__(self) -> None:
        self.now = 50.0
        self.seq = {"q": 100, "h": 30000, "f": 65000}
        self.pid = {"q": 5, "h": 500, "f": 32000}
        self.ts = {"q": 1000, "h": 77777, "f": 4_000_000_000}
        self.keyframe_on: set[str] = set()
        self.requests: list[str] = []
        self.sending = set(LAYER_RIDS)
        self.sizes: dict[str, tuple[int, int]] = {}
        """Per rid, the size its keyframes carry (none: keyframes without a VP8 header)."""
        self.source = LayerSource(request_keyframe=self._request, sender_reports=self._reports)

    def _request(self, layer: int) -> None:
        self.requests.append(LAYER_RIDS[layer])
        self.keyframe_on.add(LAYER_RIDS[layer])

    def _reports(self) -> dict[int, SenderReport]:
        return {i: SenderReport(self.now, self.ts[rid]) for i, rid in enumerate(LAYER_RIDS)}

    def frame(self) -> list[MediaPacket]:
        packets = []
        for rid in LAYER_RIDS:
            key = rid in self.keyframe_on
            if rid in self.sending:
                pid = self.pid[rid]
                payload = bytes([0x90, 0xC0, 0x80 | pid >> 8, pid & 0xFF, pid & 0xFF])
                payload += bytes([0 if key else 1]) + b"data"
                if key and rid in self.sizes:
                    payload = payload[:-5] + vp8_keyframe_header(*self.sizes[rid])
                packets.append(
                    MediaPacket(
                        sequence_number=self.seq[rid],
                        timestamp=self.ts[rid],
                        marker=1,
                        payload=payload,
                        ssrc=1 + LAYER_RIDS.index(rid),
                        payload_type=96,
                        rid=rid,
                    )
                )
            self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
            self.pid[rid] = (self.pid[rid] + 1) & 0x7FFF
            self.ts[rid] = (self.ts[rid] + 3000) % (1 << 32)
        self.keyframe_on.clear()
        self.now += 1 / 30
        return packets


def vp8_keyframe_header(width: int, height: int) -> bytes:
    """The first bytes of a VP8 keyframe (RFC 6386 9.1): frame tag, start code, size."""
    return b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"data"


def make() -> tuple[Router, Publisher]:
    pub = Publisher()
    router = Router(
        keyframe_interval=0.5,
        clock=lambda: pub.now,
        schedule=lambda delay, cb: None,  # type: ignore[arg-type,return-value]
        first_sequence=lambda: 4000,
    )
    router.publish("cam", VP8, request_keyframe=lambda: None, simulcast=pub.source)
    return router, pub


def subscribed(router: Router) -> tuple[Leg, SimulcastTrack]:
    """A leg subscribed to the track, and the track's simulcast state."""
    leg = Leg("viewer/cam")
    router.subscribe("cam", leg)
    simulcast = router.simulcast("cam")
    assert simulcast is not None
    return leg, simulcast


async def frames(router: Router, pub: Publisher, count: int) -> None:
    for _ in range(count):
        for packet in pub.frame():
            await router.forward("cam", packet)


SETTLE = 20
"""Frames (2/3 s) in which a leg surely switched: a keyframe request waits out the half
second since the last one to its layer."""


def runs(leg: Leg) -> list[str]:
    """The layers a leg carried, in order, each run once."""
    return [rid for rid, _ in itertools.groupby(leg.rids)]


def assert_unbroken(leg: Leg, max_step: int = 3000) -> None:
    """Consecutive sequence numbers and picture ids; timestamps only forwards, by at most
    `max_step` (a frame, unless the leg sent nothing for a while)."""
    for (_, a, sa), (_, b, sb) in itertools.pairwise(leg.sent):
        assert sb == (sa + 1) & 0xFFFF
        da, db = parse_vp8_descriptor(a.payload), parse_vp8_descriptor(b.payload)
        assert db.picture_id == ((da.picture_id or 0) + 1) & 0x7FFF
        assert 0 < (b.timestamp - a.timestamp) % (1 << 32) <= max_step


async def test_a_leg_gets_the_highest_layer_by_default_from_its_keyframe() -> None:
    router, pub = make()
    await frames(router, pub, 2)  # the layers are seen before anyone subscribes
    leg = Leg("viewer/cam")
    router.subscribe("cam", leg)
    assert pub.requests == ["f"]
    await frames(router, pub, 5)
    assert set(leg.rids) == {"f"} and len(leg.sent) == 5
    assert leg.sent[0][2] == 4000
    assert_unbroken(leg)


async def test_low_high_low_switches_at_each_layers_keyframe_without_a_break() -> None:
    router, pub = make()
    leg, simulcast = subscribed(router)
    assert simulcast.set_preference("viewer/cam", quality=Quality.LOW) == 0
    await frames(router, pub, SETTLE)
    assert set(leg.rids) == {"q"}
    assert simulcast.set_preference("viewer/cam", quality=Quality.HIGH) == 2
    await frames(router, pub, SETTLE)
    assert simulcast.set_preference("viewer/cam", quality=Quality.LOW) == 0
    await frames(router, pub, SETTLE)
    assert runs(leg) == ["q", "f", "q"] and simulcast.legs["viewer/cam"].munger.switches == 3
    assert len(leg.sent) >= 3 * SETTLE - 30  # a switch waits at most one interval
    assert_unbroken(leg)


async def test_a_switch_is_reported_when_its_keyframe_is_sent_not_when_asked() -> None:
    router, pub = make()
    leg, simulcast = subscribed(router)
    reported: list[tuple[str, int, int]] = []
    simulcast.on_layer_switched = lambda leg_id, layer: reported.append(
        (leg_id, layer, len(leg.sent))
    )
    await frames(router, pub, SETTLE)
    assert reported == [("viewer/cam", 2, 1)]  # the first keyframe, once sent
    pub.sending.discard("q")  # asked for a layer that does not arrive: nothing to report
    simulcast.set_preference("viewer/cam", quality=Quality.LOW)
    await frames(router, pub, 1)
    assert reported == [("viewer/cam", 2, 1)]
    pub.sending.add("q")
    await frames(router, pub, SETTLE)
    switched_at = next(i for i, rid in enumerate(leg.rids) if rid == "q")
    assert reported[1:] == [("viewer/cam", 0, switched_at + 1)]
    assert set(leg.rids[switched_at:]) == {"q"}


async def test_keyframe_requests_are_rate_limited_per_layer() -> None:
    router, pub = make()
    await frames(router, pub, 1)
    leg = Leg("viewer/cam")
    router.subscribe("cam", leg)
    pub.keyframe_on.clear()  # the publisher ignores the request
    pub.requests.clear()
    pub._request = lambda layer: pub.requests.append(LAYER_RIDS[layer])  # type: ignore[method-assign]
    pub.source = LayerSource(request_keyframe=pub._request, sender_reports=pub._reports)
    router.simulcast("cam").source = pub.source  # type: ignore[union-attr]
    await frames(router, pub, 30)  # one second: a request per half second at most
    assert 1 <= pub.requests.count("f") <= 3 and leg.sent == []


async def test_a_layer_that_stops_arriving_is_replaced_by_the_next_one_down() -> None:
    router, pub = make()
    leg = Leg("viewer/cam")
    router.subscribe("cam", leg)
    await frames(router, pub, 3)
    pub.sending.discard("f")
    await frames(router, pub, int(LAYER_TIMEOUT * 30) + 15)
    assert leg.rids[:3] == ["f"] * 3 and leg.rids[-1] == "h"
    pub.sending.add("f")
    await frames(router, pub, SETTLE)
    assert runs(leg) == ["f", "h", "f"]
    assert_unbroken(leg, max_step=3000 * 30 * 2)  # h began a second after f went quiet


async def test_wanted_layers_follow_the_legs_for_dynacast() -> None:
    router, pub = make()
    simulcast = router.simulcast("cam")
    assert simulcast is not None
    changes: list[frozenset[int]] = []
    simulcast.on_wanted_layers = changes.append
    await frames(router, pub, 1)
    small, large = Leg("a/cam"), Leg("b/cam")
    router.subscribe("cam", small)
    simulcast.set_preference("a/cam", rendered=(160, 90))
    router.subscribe("cam", large)
    await frames(router, pub, 2)
    assert simulcast.wanted_layers == {0, 2}
    router.unsubscribe("cam", "b/cam")
    assert changes[-1] == {0}
    assert set(small.rids) == {"q"} and set(large.rids) == {"f"}


async def test_a_climbing_leg_keeps_the_layers_below_its_goal_wanted() -> None:
    """A publisher that cannot send f yet (Firefox's bandwidth estimate ramps up) is asked
    for h on the way up: a leg on q asking for high gets h, not q until f comes."""
    router, pub = make()
    pub.sending = {"q", "h"}
    simulcast = router.simulcast("cam")
    assert simulcast is not None
    leg = Leg("viewer/cam")
    router.subscribe("cam", leg)
    simulcast.set_preference("viewer/cam", quality=Quality.LOW)
    await frames(router, pub, SETTLE)
    assert leg.rids[-1] == "q" and simulcast.wanted_layers == {0}
    pub.sending = {"q"}  # dynacast paused h
    await frames(router, pub, 2 * SETTLE)  # h unseen for over LAYER_TIMEOUT
    assert simulcast.available == {0}
    simulcast.set_preference("viewer/cam", quality=Quality.HIGH)
    assert simulcast.wanted_layers == {0, 1, 2}
    pub.sending = {"q", "h"}  # the publisher resumes h; f stays beyond its estimate
    await frames(router, pub, SETTLE)
    assert leg.rids[-1] == "h" and simulcast.wanted_layers == {1, 2}
    assert_unbroken(leg, max_step=3000 * 2)


async def test_loss_on_a_leg_steps_it_down_and_it_probes_back_up() -> None:
    router, pub = make()
    leg, simulcast = subscribed(router)
    await frames(router, pub, 2)
    simulcast.on_link_report("viewer/cam", loss_fraction=0.3)
    await frames(router, pub, SETTLE)
    assert leg.rids[-1] == "h"
    for _ in range(5):  # clean reports, one per second
        await frames(router, pub, 30)
        simulcast.on_link_report("viewer/cam", loss_fraction=0.0)
    await frames(router, pub, 2)
    assert leg.rids[-1] == "f"
    assert_unbroken(leg)


async def test_muted_simulcast_forwards_nothing_and_counts() -> None:
    router, pub = make()
    leg = Leg("viewer/cam")
    router.subscribe("cam", leg)
    router.set_muted("cam", True)
    await frames(router, pub, 2)
    stats = router.stats("cam")
    assert leg.sent == [] and stats.packets_dropped_muted == 6 and stats.subscribers == 1
    router.set_muted("cam", False)
    await frames(router, pub, SETTLE)
    assert set(leg.rids) == {"f"}
    # A packet with no (or an unknown) rid is not a layer: nothing is sent.
    stray = MediaPacket(1, 1, 1, b"\x10\x00", ssrc=9, payload_type=96, rid="x")
    assert await router.forward("cam", stray) == 0


CAMERA_360P = ((160, 90), (320, 180), (640, 360))
TILE = (448, 252)


async def test_announced_layers_move_a_tile_to_the_layer_that_covers_it() -> None:
    """A 448x252 tile of a 640x360 camera: h by the 720p defaults, f once the publisher
    announces its layers; the leg switches at f's keyframe and the wants follow."""
    router, pub = make()
    leg, simulcast = subscribed(router)
    simulcast.set_preference("viewer/cam", rendered=TILE)
    await frames(router, pub, SETTLE)
    assert set(leg.rids) == {"h"} and simulcast.wanted_layers == {1}
    simulcast.announce(
        announced_layers(
            (rid, w, h, 500_000) for rid, (w, h) in zip("qhf", CAMERA_360P, strict=True)
        )
    )
    assert simulcast.legs["viewer/cam"].link.layers == simulcast.layers
    await frames(router, pub, SETTLE)
    assert runs(leg) == ["h", "f"] and simulcast.wanted_layers == {2}
    simulcast.announce(None)  # forgotten: the defaults again
    assert simulcast.layers == DEFAULT_LAYERS
    assert_unbroken(leg)


async def test_without_an_announcement_vp8_keyframes_say_the_sizes() -> None:
    router, pub = make()
    pub.sizes = dict(zip(LAYER_RIDS, CAMERA_360P, strict=True))
    leg, simulcast = subscribed(router)
    simulcast.set_preference("viewer/cam", rendered=TILE)
    await frames(router, pub, SETTLE)
    assert [(x.width, x.height) for x in simulcast.layers] == list(CAMERA_360P)
    assert leg.rids[-1] == "f"
    # An announcement wins over what keyframes say, and keyframes no longer change it.
    announced = announced_layers((("f", 1280, 720, 1_700_000),))
    simulcast.announce(announced)
    pub.keyframe_on.update(LAYER_RIDS)
    await frames(router, pub, SETTLE)
    assert simulcast.layers == announced and leg.rids[-1] == "h"
