"""One simulcast track's fan-out: a layer per leg, switched at keyframes, chosen per leg.

The router hands a simulcast track's packets here (`forwarder.router` keeps publishing,
muting and counting). Each leg has a `LayerMunger` (one unbroken stream whatever the layer)
and the three inputs of its layer choice (`forwarder.layers`): the quality its subscriber
asked for, the size it renders at, and its link estimate. A leg's target is re-chosen
whenever one of those changes, or a layer starts or stops arriving (a layer unseen for
`LAYER_TIMEOUT` seconds is gone: the publisher paused it, or its link cannot carry it).

Keyframe requests go to the layer a leg waits for, at most one per layer per
`keyframe_interval` seconds; a leg still waiting when the interval ends asks again with
its next packet. `wanted_layers` is what dynacast tells the publisher to keep sending.

What the layers are (sizes for the rendered-size limit, bitrates for the link estimate) is
what the publisher announced (`announce`); without an announcement, the sizes its VP8
keyframes carry (read from each layer's keyframes as they pass); before either,
`DEFAULT_LAYERS`. A change re-chooses every leg.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forwarder.layers import (
    DEFAULT_LAYERS,
    LayerSpec,
    LinkEstimator,
    Quality,
    choose_layer,
    learned_layers,
)
from forwarder.simulcast import (
    LAYER_RIDS,
    LayerMunger,
    SenderReport,
    layer_of_rid,
    ntp_to_seconds,
)
from rtc.packets import CodecInfo, DuplicateFilter, MediaPacket, is_keyframe_start
from rtc.vp8 import Vp8Descriptor, parse_vp8_descriptor, vp8_keyframe_size

if TYPE_CHECKING:
    from forwarder.router import Leg
    from rtc.aiortc_adapter import InboundStream

LAYER_TIMEOUT = 1.0
"""Seconds without a packet after which a layer counts as not sent."""
_AVAILABILITY_CHECK = 0.25


class SimulcastLeg:
    """A leg's layer state: its munger and what its layer choice reads."""

    __slots__ = ("desired", "leg", "link", "munger", "rendered", "requested")

    def __init__(self, leg: Leg, munger: LayerMunger, link: LinkEstimator) -> None:
        self.leg = leg
        self.munger = munger
        self.link = link
        self.requested = Quality.HIGH
        self.rendered: tuple[int, int] | None = None
        self.desired = int(Quality.HIGH)
        """The layer the leg's limits allow, whether or not it arrives now."""


def leg_wants(current: int | None, target: int | None, desired: int) -> set[int]:
    """The layers one leg needs sent: the one it carries, the one it waits for, the one it
    would take, and, while it climbs, every layer between. A publisher may not send the
    desired layer for a while (Firefox's bandwidth estimate reaches the full layer some
    25 s after it starts: it has no ``x-google-start-bitrate``); without the layers in
    between, the one a leg could climb to would stay paused and the leg would wait on the
    lowest."""
    held = [layer for layer in (current, target) if layer is not None]
    wanted = {desired, *held}
    if held and desired > max(held):
        wanted.update(range(max(held) + 1, desired))
    return wanted


@dataclass(frozen=True, slots=True)
class LayerSource:
    """What a simulcast track needs of its publisher connection."""

    request_keyframe: Callable[[int], None]
    """Ask for a keyframe on layer n (a PLI to its SSRC)."""
    sender_reports: Callable[[], Mapping[int, SenderReport]]
    """Each layer's latest RTCP sender report."""


def stream_source(stream: InboundStream) -> LayerSource:
    """The `LayerSource` of a publisher's simulcast `InboundStream`."""

    def request(layer: int) -> None:
        stream.request_keyframe(rid=LAYER_RIDS[layer])

    def reports() -> dict[int, SenderReport]:
        found = {}
        for rid, ssrc in stream.layer_ssrcs.items():
            report = stream.sender_reports.get(ssrc)
            if report is not None and rid in LAYER_RIDS:
                found[layer_of_rid(rid)] = SenderReport(ntp_to_seconds(report[0]), report[1])
        return found

    return LayerSource(request_keyframe=request, sender_reports=reports)


class SimulcastTrack:
    """Forwards one simulcast track's layers to its legs (each leg `send(packet, seq)`)."""

    def __init__(
        self,
        codec: CodecInfo,
        source: LayerSource,
        *,
        keyframe_interval: float,
        clock: Callable[[], float] = time.monotonic,
        layers: tuple[LayerSpec, ...] = DEFAULT_LAYERS,
    ) -> None:
        self.codec = codec
        self.source = source
        self.layers = layers
        self._keyframe_interval = keyframe_interval
        self._clock = clock
        self.legs: dict[str, SimulcastLeg] = {}
        self._last_seen: dict[int, float] = {}
        self._available: frozenset[int] = frozenset()
        self._checked_at = 0.0
        self._last_request: dict[int, float] = {}
        self._duplicates = {layer: DuplicateFilter() for layer in range(len(LAYER_RIDS))}
        self.repeated = 0
        self.keyframe_requests = 0
        self.on_wanted_layers: Callable[[frozenset[int]], None] | None = None
        """Called with `wanted_layers` whenever it changes (dynacast)."""
        self.on_layer_switched: Callable[[str, int], None] | None = None
        """Called with (leg id, layer) when a leg starts forwarding a layer: the keyframe it
        switches at is being sent (the subscriber is told what it gets, not what it asked)."""
        self._wanted: frozenset[int] = frozenset()
        self._announced: tuple[LayerSpec, ...] | None = None
        self._learned: dict[int, tuple[int, int]] = {}
        """Layer -> the (width, height) its latest VP8 keyframe carried."""
        self._preferences: dict[str, tuple[Quality | None, tuple[int, int] | None]] = {}

    @property
    def available(self) -> frozenset[int]:
        """The layers arriving now."""
        return self._available

    @property
    def wanted_layers(self) -> frozenset[int]:
        """Layers some leg carries, waits for, or would take if they arrived: the ones the
        publisher must keep (or start) sending."""
        wanted: set[int] = set()
        for state in self.legs.values():
            wanted |= leg_wants(state.munger.current, state.munger.target, state.desired)
        return frozenset(wanted)

    def subscribe(self, leg_id: str, leg: Leg, *, first_sequence: int, now: float) -> None:
        munger = LayerMunger(
            clock_rate=self.codec.clock_rate,
            first_sequence=first_sequence,
            first_timestamp=first_sequence * 7919,
        )
        state = self.legs[leg_id] = SimulcastLeg(leg, munger, LinkEstimator(self.layers, now=now))
        quality, rendered = self._preferences.get(leg_id, (None, None))
        state.requested = Quality.HIGH if quality is None else quality
        state.rendered = rendered
        self._choose(state)
        self._wanted_changed()

    def unsubscribe(self, leg_id: str) -> None:
        self._preferences.pop(leg_id, None)
        if self.legs.pop(leg_id, None) is not None:
            self._wanted_changed()

    def prefer(
        self, leg_id: str, *, quality: Quality | None, rendered: tuple[int, int] | None
    ) -> None:
        """A subscriber's wishes for its leg (`None`: no limit), kept for a leg that is not
        forwarding yet and applied when it is."""
        self._preferences[leg_id] = (quality, rendered)
        state = self.legs.get(leg_id)
        if state is not None:
            state.requested = Quality.HIGH if quality is None else quality
            state.rendered = rendered
            self._choose(state)
            self._wanted_changed()

    def set_preference(
        self,
        leg_id: str,
        *,
        quality: Quality | None = None,
        rendered: tuple[int, int] | None = None,
        clear_rendered: bool = False,
    ) -> int | None:
        """Change a leg's requested quality and/or rendered size; its new target layer."""
        state = self.legs[leg_id]
        if quality is not None:
            state.requested = quality
        if rendered is not None or clear_rendered:
            state.rendered = rendered
        self._choose(state)
        self._wanted_changed()
        return state.munger.target

    def on_link_report(
        self, leg_id: str, *, loss_fraction: float | None = None, remb: int | None = None
    ) -> None:
        """A subscriber's RTCP feedback for this leg (receiver report loss, REMB)."""
        state = self.legs.get(leg_id)
        if state is not None and state.link.on_report(
            self._clock(), loss_fraction=loss_fraction, remb=remb, current=state.munger.current
        ):
            self._choose(state)
            self._wanted_changed()

    def announce(self, layers: tuple[LayerSpec, ...] | None) -> None:
        """The publisher's own account of its layers (`forwarder.layers.announced_layers`);
        None forgets it (sizes learned from keyframes, or the defaults, apply again)."""
        self._announced = layers
        self._relayer()

    def _learn(self, layer: int, payload: bytes, vp8: Vp8Descriptor) -> None:
        size = vp8_keyframe_size(payload, vp8)
        if size is not None and self._learned.get(layer) != size:
            self._learned[layer] = size
            self._relayer()

    def _relayer(self) -> None:
        """Take the layers now known (announced, else learned); re-choose every leg."""
        layers = self._announced if self._announced is not None else learned_layers(self._learned)
        if layers == self.layers:
            return
        self.layers = layers
        for state in self.legs.values():
            state.link.layers = layers
            self._choose(state)
        self._wanted_changed()

    def restart(self, source: LayerSource) -> None:
        """The track comes from a new publisher connection: every leg restarts at a
        keyframe of its target layer, continuing its own numbers."""
        self.source = source
        self._last_seen.clear()
        self._available = frozenset()
        self._duplicates = {layer: DuplicateFilter() for layer in range(len(LAYER_RIDS))}
        for state in self.legs.values():
            state.munger.set_target(None)
            self._choose(state)

    def request_keyframes(self) -> bool:
        """Ask for a keyframe on every layer a leg carries or waits for (rate limited)."""
        now = self._clock()
        return any([self._request(layer, now) for layer in self.wanted_layers])

    async def forward(self, packet: MediaPacket) -> int:
        """Send one received packet to the legs carrying (or switching to) its layer;
        returns how many legs it was sent to."""
        if packet.rid is None or packet.rid not in LAYER_RIDS:
            return 0
        layer = layer_of_rid(packet.rid)
        if self._duplicates[layer].is_repeat(packet.sequence_number):
            self.repeated += 1
            return 0
        now = self._clock()
        self._seen(layer, now)
        vp8: Vp8Descriptor | None = None
        keyframe = False
        if packet.payload:
            if self.codec.name == "VP8":
                vp8 = parse_vp8_descriptor(packet.payload)
                keyframe = vp8.keyframe
                if keyframe and self._announced is None:
                    self._learn(layer, packet.payload, vp8)
            else:
                keyframe = is_keyframe_start(self.codec.name, packet.payload)
        reports: Mapping[int, SenderReport] | None = None
        sent = 0
        waiting = False
        for state in list(self.legs.values()):
            munger = state.munger
            if munger.current != layer and munger.target != layer:
                continue
            if munger.target == layer and munger.current != layer and not keyframe:
                waiting = True
                continue
            if reports is None and munger.current != layer:
                reports = self.source.sender_reports()
            out = munger.munge(
                layer,
                packet.sequence_number,
                packet.timestamp,
                packet.payload,
                keyframe=keyframe,
                now=now,
                vp8=vp8,
                reports=dict(reports) if reports is not None else None,
            )
            if out is None:
                continue
            munged = dataclasses.replace(packet, timestamp=out.timestamp, payload=out.payload)
            if await state.leg.send(munged, out.sequence_number):
                sent += 1
            if out.switched and self.on_layer_switched is not None:
                self.on_layer_switched(state.leg.leg_id, layer)
        if waiting:
            self._request(layer, now)
        return sent

    def _seen(self, layer: int, now: float) -> None:
        self._last_seen[layer] = now
        if layer not in self._available or now - self._checked_at >= _AVAILABILITY_CHECK:
            self._checked_at = now
            available = frozenset(
                seen for seen, at in self._last_seen.items() if now - at < LAYER_TIMEOUT
            )
            if available != self._available:
                self._available = available
                for state in self.legs.values():
                    self._choose(state)
                self._wanted_changed()

    def _choose(self, state: SimulcastLeg) -> None:
        state.desired = (
            choose_layer(
                self.layers,
                range(len(self.layers)),
                requested=state.requested,
                rendered=state.rendered,
                link_ceiling=state.link.ceiling,
            )
            or 0
        )
        target = choose_layer(
            self.layers,
            self._available,
            requested=state.requested,
            rendered=state.rendered,
            link_ceiling=state.link.ceiling,
        )
        if target is None:
            target = state.desired  # nothing arrives yet: the first layer seen re-chooses
        if target != state.munger.target and state.munger.set_target(target):
            self._request(target, self._clock())

    def _request(self, layer: int, now: float) -> bool:
        last = self._last_request.get(layer)
        if last is not None and now - last < self._keyframe_interval:
            return False
        self._last_request[layer] = now
        self.keyframe_requests += 1
        self.source.request_keyframe(layer)
        return True

    def _wanted_changed(self) -> None:
        wanted = self.wanted_layers
        if wanted != self._wanted:
            self._wanted = wanted
            if self.on_wanted_layers is not None:
                self.on_wanted_layers(wanted)
