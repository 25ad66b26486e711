"""Which simulcast layer each subscriber gets, and what its link carries. Pure.

A leg's layer is the lowest of three limits:

- the quality its subscriber asked for (`Quality`: low, medium, high);
- the size it renders the video at (adaptive stream): the smallest layer at least as
  large as the element, so a thumbnail never costs full resolution;
- what its link carries (`LinkEstimator`, fed from the subscriber's RTCP: REMB and the
  loss fraction of its receiver reports): step down at once on congestion, probe up one
  layer at a time after a hold, and hold longer after a probe that failed. A REMB can only
  say "less": a receiver's estimate is bounded by what it receives (about 1.5 times it)
  and climbs slowly after a switch up, so it never shows room for a larger layer and only
  a falling estimate that no longer covers the received layer counts as congestion;
  probing up is judged by the loss that follows it.

Among the layers the publisher actually sends (`available`), the highest at or below that
limit wins; when none is that low, the lowest one sent (some video beats none).

What each layer is (its size, for the rendered-size limit, and its bitrate, for the link
estimate) comes from the publisher: `announced_layers` checks what a client announces
(`schemas.client.PublishedLayer`). A track without an announcement keeps `DEFAULT_LAYERS`
(the browser SDK's 720p camera) until its VP8 keyframes say the real sizes
(`learned_layers`). A layer left out of either is inferred from its neighbours: each
layer is half the size of the one above.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from forwarder.errors import BadLayers, BadQuality
from forwarder.simulcast import layer_of_rid


class Quality(enum.IntEnum):
    """A subscriber's requested video quality; the value is the highest layer it allows."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2

    @classmethod
    def parse(cls, name: str) -> Quality:
        """``"low"``, ``"medium"`` or ``"high"``; `BadQuality` for anything else."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise BadQuality(name) from None


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One simulcast layer as published: its size and the bitrate it needs."""

    width: int
    height: int
    bitrate: int
    """Bits per second the layer needs (its encoder's max bitrate)."""


DEFAULT_LAYERS = (
    LayerSpec(320, 180, 150_000),
    LayerSpec(640, 360, 500_000),
    LayerSpec(1280, 720, 1_700_000),
)
"""Layers q, h, f of the browser SDK's 720p camera."""

LAYER_COUNT = len(DEFAULT_LAYERS)
MAX_LAYER_SIDE = 8192
"""The largest width or height a layer may have (8K video is 7680 x 4320)."""
MAX_LAYER_BITRATE = 50_000_000
"""The largest bitrate a layer may claim, bits per second."""
MIN_LAYER_BITRATE = 10_000


def estimated_bitrate(width: int, height: int) -> int:
    """The bitrate a layer of that size needs when nobody said (a learned or inferred size):
    `DEFAULT_LAYERS`' bitrates, interpolated by pixel count (proportional beyond them)."""
    pixels = width * height
    points = [(layer.width * layer.height, layer.bitrate) for layer in DEFAULT_LAYERS]
    if pixels <= points[0][0]:
        return max(MIN_LAYER_BITRATE, points[0][1] * pixels // points[0][0])
    for (low_px, low_bps), (high_px, high_bps) in itertools.pairwise(points):
        if pixels <= high_px:
            return low_bps + (high_bps - low_bps) * (pixels - low_px) // (high_px - low_px)
    return min(MAX_LAYER_BITRATE, points[-1][1] * pixels // points[-1][0])


def complete_layers(known: Mapping[int, tuple[int, int, int | None]]) -> tuple[LayerSpec, ...]:
    """All `LAYER_COUNT` layers from some of them: layer index -> (width, height, bitrate
    or None). A missing layer is half (or twice) the size of its nearest known neighbour,
    a missing bitrate is `estimated_bitrate`. Nothing known: `DEFAULT_LAYERS`."""
    if not known:
        return DEFAULT_LAYERS
    layers = []
    for index in range(LAYER_COUNT):
        nearest = min(known, key=lambda k: (abs(k - index), -k))
        width, height, bitrate = known[nearest]
        if nearest != index:
            scale = 2.0 ** (index - nearest)
            width, height, bitrate = (
                max(1, round(width * scale)),
                max(1, round(height * scale)),
                None,
            )
        layers.append(
            LayerSpec(
                width, height, bitrate if bitrate is not None else estimated_bitrate(width, height)
            )
        )
    return tuple(layers)


def announced_layers(announced: Iterable[tuple[str, int, int, int]]) -> tuple[LayerSpec, ...]:
    """The layers a publisher announced as (rid, width, height, max bitrate), checked.

    Named errors for nonsense: `BadLayer` for a rid not q/h/f; `BadLayers` for a side
    below 1 or over `MAX_LAYER_SIDE`, a bitrate outside `MIN_LAYER_BITRATE` ..
    `MAX_LAYER_BITRATE`, a rid twice, or a lower rid larger than a higher one (the size
    limit needs q <= h <= f). Rids left out are inferred
    (`complete_layers`); an empty announcement means `DEFAULT_LAYERS`.
    """
    known: dict[int, tuple[int, int, int | None]] = {}
    for rid, width, height, bitrate in announced:
        layer = layer_of_rid(rid)
        if layer in known:
            raise BadLayers(f"rid {rid} is announced twice")
        if not (1 <= width <= MAX_LAYER_SIDE and 1 <= height <= MAX_LAYER_SIDE):
            raise BadLayers(
                f"layer {rid}: {width}x{height} is not a video size "
                f"(1..{MAX_LAYER_SIDE} pixels a side)"
            )
        if not MIN_LAYER_BITRATE <= bitrate <= MAX_LAYER_BITRATE:
            raise BadLayers(
                f"layer {rid}: max_bitrate {bitrate} is not in "
                f"{MIN_LAYER_BITRATE}..{MAX_LAYER_BITRATE} bit/s"
            )
        known[layer] = (width, height, bitrate)
    ordered = [known[layer] for layer in sorted(known)]
    for (w1, h1, _), (w2, h2, _) in itertools.pairwise(ordered):
        if w1 > w2 or h1 > h2:
            raise BadLayers(f"a lower layer ({w1}x{h1}) is larger than a higher one ({w2}x{h2})")
    return complete_layers(known)


def learned_layers(sizes: Mapping[int, tuple[int, int]]) -> tuple[LayerSpec, ...]:
    """The layers of a track that announced none, from the sizes its keyframes carried
    (layer index -> (width, height)); bitrates estimated. Sizes that contradict the
    q <= h <= f order (a keyframe from before a resolution change) keep the defaults."""
    ordered = [sizes[layer] for layer in sorted(sizes)]
    for (w1, h1), (w2, h2) in itertools.pairwise(ordered):
        if w1 > w2 or h1 > h2:
            return DEFAULT_LAYERS
    return complete_layers({layer: (w, h, None) for layer, (w, h) in sizes.items()})


def layer_for_size(layers: Sequence[LayerSpec], width: int, height: int) -> int:
    """The smallest layer that covers a `width` x `height` element (the top one if none)."""
    for index, layer in enumerate(layers):
        if layer.width >= width and layer.height >= height:
            return index
    return len(layers) - 1


def layer_for_bitrate(layers: Sequence[LayerSpec], bitrate: int) -> int:
    """The highest layer that fits in `bitrate` bits per second (layer 0 if none does)."""
    best = 0
    for index, layer in enumerate(layers):
        if layer.bitrate <= bitrate:
            best = index
    return best


def choose_layer(
    layers: Sequence[LayerSpec],
    available: Collection[int],
    *,
    requested: Quality = Quality.HIGH,
    rendered: tuple[int, int] | None = None,
    link_ceiling: int | None = None,
) -> int | None:
    """The layer a leg should carry; None when the publisher sends no layer at all.

    `rendered` is the subscriber's (width, height) in pixels, None if unknown (no limit);
    `link_ceiling` is its `LinkEstimator.ceiling`, None if unknown.
    """
    if not available:
        return None
    limit = min(int(requested), len(layers) - 1)
    if rendered is not None:
        limit = min(limit, layer_for_size(layers, *rendered))
    if link_ceiling is not None:
        limit = min(limit, link_ceiling)
    fitting = [layer for layer in available if layer <= limit]
    return max(fitting) if fitting else min(available)


LOSS_CONGESTED = 0.10
"""A receiver-report loss fraction at or above this steps the leg down."""
LOSS_CLEAR = 0.02
"""Probing up needs the latest loss fraction below this."""
REMB_SHORTFALL = 2.0
"""A falling REMB congests the link when the layer being received needs more than this
many times the estimate (the estimate trails the received rate: only a clear shortfall)."""
REMB_FALL = 0.9
"""A REMB below this fraction of the one before is falling (a rising one only catches up)."""
BASE_HOLD = 2.0
MAX_HOLD = 16.0


class LinkEstimator:
    """How high a subscriber's link lets its leg go, from its RTCP feedback.

    `ceiling` is a layer index. Congestion (a loss fraction >= `LOSS_CONGESTED`, or a
    falling REMB under 1/`REMB_SHORTFALL` of the bitrate of the layer being received)
    lowers it by one layer below what is received, at once. It rises one layer at a time,
    only after `hold` seconds without a change and with low loss. A step down within
    `hold` of a step up means the probe failed: the hold doubles (up to `MAX_HOLD`); a
    probe that holds for a whole hold resets it to `BASE_HOLD`.
    """

    __slots__ = (
        "_changed_at",
        "_falling",
        "_probed_at",
        "ceiling",
        "estimate",
        "hold",
        "layers",
        "loss",
    )

    def __init__(self, layers: Sequence[LayerSpec], *, now: float) -> None:
        self.layers = tuple(layers)
        """What each layer needs; replaced when the publisher's layers become known."""
        self.ceiling = len(self.layers) - 1
        self.estimate: int | None = None
        """The latest REMB, bits per second."""
        self.loss = 0.0
        self.hold = BASE_HOLD
        self._changed_at = now
        self._probed_at: float | None = None
        self._falling = False

    def on_report(
        self,
        now: float,
        *,
        loss_fraction: float | None = None,
        remb: int | None = None,
        current: int | None = None,
    ) -> bool:
        """Take one RTCP report (either field may be absent) about a leg receiving layer
        `current` (None: none yet); True if `ceiling` changed."""
        if loss_fraction is not None:
            self.loss = loss_fraction
        self._falling = False
        if remb is not None:
            self._falling = self.estimate is not None and remb < self.estimate * REMB_FALL
            self.estimate = remb
        before = self.ceiling
        if self._probed_at is not None and now - self._probed_at >= self.hold:
            self.hold = BASE_HOLD  # the last probe held
            self._probed_at = None
        if self._congested(current):
            self._step_down(now, current)
        elif self._may_probe(now):
            self.ceiling += 1
            self._changed_at = self._probed_at = now
        return self.ceiling != before

    def _congested(self, current: int | None) -> bool:
        if self.ceiling == 0:
            return False
        if self.loss >= LOSS_CONGESTED:
            return True
        return (
            self._falling
            and self.estimate is not None
            and current is not None
            and current > 0
            and self.estimate * REMB_SHORTFALL < self.layers[current].bitrate
        )

    def _step_down(self, now: float, current: int | None) -> None:
        if self._probed_at is not None and now - self._probed_at < self.hold:
            self.hold = min(self.hold * 2, MAX_HOLD)  # the probe failed
            self._probed_at = None
        received = self.ceiling if current is None else min(self.ceiling, current)
        self.ceiling = max(0, received - 1)
        self._changed_at = now

    def _may_probe(self, now: float) -> bool:
        if self.ceiling >= len(self.layers) - 1 or self.loss >= LOSS_CLEAR:
            return False
        return now - self._changed_at >= self.hold
