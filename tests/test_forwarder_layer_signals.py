"""The forwarder's simulcast signaling: quality wishes kept per session and track, and
dynacast messages coalesced per track."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from forwarder.layer_signals import LayerSignals
from forwarder.layers import Quality
from forwarder.node import Forwarder
from forwarder.simulcast_track import LayerSource
from rtc.packets import CodecInfo, MediaPacket
from schemas.client import LayersWanted, VideoLayer
from schemas.codec import decode
from schemas.media import SubscriberLayers

VP8 = CodecInfo(kind="video", mime_type="video/VP8", clock_rate=90000)


@dataclass
class Nats:
    sent: list[tuple[str, object]] = field(default_factory=list)

    async def publish(self, subject: str, data: bytes) -> None:
        await asyncio.sleep(0)  # a send takes a moment: changes meanwhile coalesce
        self.sent.append((subject, decode(data)))


@dataclass
class Leg:
    leg_id: str

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        return True


def simulcast_forwarder() -> Forwarder:
    forwarder = Forwarder()
    source = LayerSource(request_keyframe=lambda layer: None, sender_reports=dict)
    forwarder.router.publish("TR_cam", VP8, request_keyframe=lambda: None, simulcast=source)
    return forwarder


async def test_wanted_layers_reach_the_publisher_coalesced_newest_last() -> None:
    nats, forwarder = Nats(), simulcast_forwarder()
    subjects = {"TR_cam": "session.alice", "TR_closed": ""}
    signals = LayerSignals(nats, forwarder, publisher_subject=subjects.get)  # type: ignore[arg-type]
    assert forwarder.on_wanted_layers is not None
    forwarder.on_wanted_layers("TR_cam", frozenset({2}))
    forwarder.on_wanted_layers("TR_cam", frozenset({0, 2}))
    forwarder.on_wanted_layers("TR_gone", frozenset({1}))  # nobody publishes it here
    forwarder.on_wanted_layers("TR_closed", frozenset({1}))  # its publisher's session closed
    for _ in range(5):
        await asyncio.sleep(0)
    assert nats.sent == [("session.alice", LayersWanted(track_sid="TR_cam", rids=("q", "f")))]
    assert signals.sent == 1
    signals.close()


async def test_a_wish_applies_to_the_leg_now_and_to_a_later_one() -> None:
    nats, forwarder = Nats(), simulcast_forwarder()
    signals = LayerSignals(nats, forwarder, publisher_subject=lambda track: None)  # type: ignore[arg-type]
    track = forwarder.router.simulcast("TR_cam")
    assert track is not None
    forwarder.router.subscribe("TR_cam", Leg("S1/TR_cam"))
    wish = SubscriberLayers(room_id="r", sid="PA_1", track_sid="TR_cam", quality="low")
    signals.wish(wish, "S1")
    assert track.legs["S1/TR_cam"].requested is Quality.LOW
    # the leg is replaced (ICE restart): the new one gets the wish once it forwards
    forwarder.router.unsubscribe("TR_cam", "S1/TR_cam")
    signals.apply("r", "PA_1", "TR_cam", "S2")
    forwarder.router.subscribe("TR_cam", Leg("S2/TR_cam"))
    assert track.legs["S2/TR_cam"].requested is Quality.LOW
    sized = SubscriberLayers(room_id="r", sid="PA_1", track_sid="TR_cam", width=320, height=180)
    signals.wish(sized, "S2")
    state = track.legs["S2/TR_cam"]
    assert (state.requested, state.rendered) == (Quality.LOW, (320, 180))  # both kept
    signals.wish(wish.__class__(room_id="r", sid="PA_1", track_sid="TR_cam", quality="high"), "S2")
    assert (state.requested, state.rendered) == (Quality.HIGH, (320, 180))
    signals.forget("r", "PA_1")
    signals.apply("r", "PA_1", "TR_cam", "S3")  # nothing kept: nothing applied
    forwarder.router.subscribe("TR_cam", Leg("S3/TR_cam"))
    assert track.legs["S3/TR_cam"].rendered is None
    await forwarder.close()


async def test_a_legs_layer_switches_reach_its_session_coalesced() -> None:
    nats, forwarder = Nats(), simulcast_forwarder()
    sessions = {("r", "PA_1"): "session.bob"}
    signals = LayerSignals(
        nats,  # type: ignore[arg-type]
        forwarder,
        publisher_subject=lambda track: None,
        session_subject=lambda room_id, sid: sessions.get((room_id, sid)),
    )
    assert forwarder.on_layer_forwarded is not None
    signals.apply("r", "PA_1", "TR_cam", "S1")
    forwarder.on_layer_forwarded("S1", "TR_cam", 2)
    forwarder.on_layer_forwarded("S1", "TR_cam", 0)  # before the first went: only the newest
    forwarder.on_layer_forwarded("S9", "TR_cam", 1)  # a leg of no session here (a relay)
    for _ in range(5):
        await asyncio.sleep(0)
    assert nats.sent == [("session.bob", VideoLayer(track_sid="TR_cam", rid="q"))]
    forwarder.on_layer_forwarded("S1", "TR_cam", 1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert nats.sent[1:] == [("session.bob", VideoLayer(track_sid="TR_cam", rid="h"))]
    signals.leg_closed("S1")
    forwarder.on_layer_forwarded("S1", "TR_cam", 2)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(nats.sent) == 2 and signals.sent == 2
    signals.close()
    await forwarder.close()
