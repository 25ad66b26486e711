"""Layer choice per subscriber: requested quality, rendered size and the link estimate."""

from __future__ import annotations

import pytest

from forwarder.errors import BadLayer, BadLayers, BadQuality
from forwarder.layers import (
    BASE_HOLD,
    DEFAULT_LAYERS,
    MAX_HOLD,
    LayerSpec,
    LinkEstimator,
    Quality,
    announced_layers,
    choose_layer,
    estimated_bitrate,
    layer_for_bitrate,
    layer_for_size,
    learned_layers,
)

ALL = (0, 1, 2)


def test_quality_names_parse_and_bad_ones_are_named() -> None:
    assert [Quality.parse(n) for n in ("low", "Medium", "HIGH")] == [
        Quality.LOW,
        Quality.MEDIUM,
        Quality.HIGH,
    ]
    with pytest.raises(BadQuality) as caught:
        Quality.parse("ultra")
    assert caught.value.quality == "ultra"


def test_rendered_size_picks_the_smallest_covering_layer() -> None:
    assert layer_for_size(DEFAULT_LAYERS, 160, 90) == 0
    assert layer_for_size(DEFAULT_LAYERS, 320, 180) == 0
    assert layer_for_size(DEFAULT_LAYERS, 321, 100) == 1
    assert layer_for_size(DEFAULT_LAYERS, 400, 400) == 2  # taller than h
    assert layer_for_size(DEFAULT_LAYERS, 3840, 2160) == 2


def test_bitrate_picks_the_highest_fitting_layer_and_never_less_than_the_lowest() -> None:
    assert layer_for_bitrate(DEFAULT_LAYERS, 10_000) == 0
    assert layer_for_bitrate(DEFAULT_LAYERS, 600_000) == 1
    assert layer_for_bitrate(DEFAULT_LAYERS, 5_000_000) == 2


def test_the_lowest_limit_wins() -> None:
    def pick(**kw: object) -> int | None:
        return choose_layer(DEFAULT_LAYERS, ALL, **kw)  # type: ignore[arg-type]

    assert pick() == 2
    assert pick(requested=Quality.LOW) == 0
    assert pick(requested=Quality.HIGH, rendered=(640, 360)) == 1
    assert pick(requested=Quality.MEDIUM, rendered=(1920, 1080)) == 1
    assert pick(requested=Quality.HIGH, rendered=(1920, 1080), link_ceiling=0) == 0
    assert pick(requested=Quality.LOW, link_ceiling=2) == 0


def test_only_layers_being_sent_are_chosen() -> None:
    assert choose_layer(DEFAULT_LAYERS, (0, 1)) == 1  # f paused by the publisher
    assert choose_layer(DEFAULT_LAYERS, (0, 2), requested=Quality.MEDIUM) == 0
    assert choose_layer(DEFAULT_LAYERS, (2,), requested=Quality.LOW) == 2  # better than none
    assert choose_layer(DEFAULT_LAYERS, ()) is None


def test_loss_steps_down_at_once_and_probing_up_waits_for_a_clear_link() -> None:
    link = LinkEstimator(DEFAULT_LAYERS, now=0.0)
    assert link.ceiling == 2
    assert link.on_report(1.0, loss_fraction=0.01) is False
    assert link.on_report(2.0, loss_fraction=0.2) is True and link.ceiling == 1
    assert link.on_report(2.5, loss_fraction=0.25) is True and link.ceiling == 0
    assert link.on_report(3.0, loss_fraction=0.3) is False and link.ceiling == 0
    # Loss gone: nothing moves until a whole hold has passed since the last change.
    assert link.on_report(3.5, loss_fraction=0.0) is False
    assert link.on_report(2.5 + BASE_HOLD, loss_fraction=0.0) is True and link.ceiling == 1
    # One layer at a time, each after its own hold.
    assert link.on_report(2.5 + BASE_HOLD + 0.5, loss_fraction=0.0) is False
    assert link.on_report(2.5 + 2 * BASE_HOLD, loss_fraction=0.0) is True and link.ceiling == 2
    # Moderate loss neither steps down nor allows probing.
    assert link.on_report(20.0, loss_fraction=0.05) is False and link.ceiling == 2


def test_a_failed_probe_doubles_the_hold_and_a_good_one_resets_it() -> None:
    link = LinkEstimator(DEFAULT_LAYERS, now=0.0)
    link.on_report(0.0, loss_fraction=0.5)
    assert link.ceiling == 1
    t = BASE_HOLD
    assert link.on_report(t, loss_fraction=0.0) and link.ceiling == 2  # probe
    assert link.on_report(t + 0.5, loss_fraction=0.3) and link.ceiling == 1  # it failed
    assert link.hold == 2 * BASE_HOLD
    assert not link.on_report(t + 0.5 + BASE_HOLD, loss_fraction=0.0)  # still holding
    t = t + 0.5 + 2 * BASE_HOLD
    assert link.on_report(t, loss_fraction=0.0) and link.ceiling == 2
    t += 2 * BASE_HOLD
    link.on_report(t, loss_fraction=0.0)  # the probe held
    assert link.hold == BASE_HOLD
    t += 1.0
    assert link.on_report(t, loss_fraction=0.9) and link.ceiling == 1  # not after a probe
    assert link.hold == BASE_HOLD
    for _ in range(6):  # probes that fail at once: the hold doubles up to its cap
        t += link.hold
        assert link.on_report(t, loss_fraction=0.0) and link.ceiling == 2
        t += 0.125
        assert link.on_report(t, loss_fraction=0.9) and link.ceiling == 1
    assert link.hold == MAX_HOLD


def test_a_falling_remb_short_of_the_received_layer_steps_down() -> None:
    link = LinkEstimator(DEFAULT_LAYERS, now=0.0)
    assert link.on_report(1.0, remb=1_000_000, current=2) is False  # 2 M covers f's 1.7 M
    assert link.on_report(1.5, remb=600_000, current=2) is True and link.ceiling == 1
    assert link.on_report(2.0, remb=500_000, current=1) is False  # enough for h
    assert link.on_report(2.5, remb=200_000, current=1) is True and link.ceiling == 0
    assert link.on_report(3.0, remb=10_000, current=0) is False  # nothing below q


def test_a_remb_catching_up_after_a_switch_up_is_no_congestion() -> None:
    """A receiver's estimate trails what it gets: after a probe to f it climbs from what h
    needed, and the leg stays on f while it does."""
    link = LinkEstimator(DEFAULT_LAYERS, now=0.0)
    link.on_report(0.0, loss_fraction=0.5, current=2)
    assert link.ceiling == 1
    link.on_report(0.5, loss_fraction=0.0, remb=300_000, current=1)
    assert link.on_report(BASE_HOLD, remb=320_000, current=1) and link.ceiling == 2  # probe
    for n in range(5):
        assert not link.on_report(BASE_HOLD + n + 1, remb=350_000 + 50_000 * n, current=2)
    assert link.ceiling == 2 and link.hold == BASE_HOLD


CAMERA_360P = (("q", 160, 90, 150_000), ("h", 320, 180, 500_000), ("f", 640, 360, 1_700_000))
"""The demo page's 640x360 camera in three layers, as the browser SDK announces it."""


def test_a_448_pixel_tile_of_a_360p_camera_gets_its_full_layer() -> None:
    """The bug of issue 12: with the 720p defaults, h (640x360 there) covers a 448x252
    tile, but this camera's h is 320x180; its f (640x360) is the smallest that covers."""
    layers = announced_layers(CAMERA_360P)
    assert layers == tuple(LayerSpec(*spec[1:]) for spec in CAMERA_360P)
    assert choose_layer(DEFAULT_LAYERS, ALL, rendered=(448, 252)) == 1
    assert choose_layer(layers, ALL, rendered=(448, 252)) == 2
    assert choose_layer(layers, ALL, rendered=(300, 170)) == 1
    assert choose_layer(layers, ALL, rendered=(160, 90)) == 0
    assert choose_layer(layers, ALL, rendered=(448, 252), requested=Quality.MEDIUM) == 1


def test_a_1080p_camera_or_a_screen_share_keeps_small_tiles_small() -> None:
    layers = announced_layers((("q", 480, 270, 200_000), ("h", 960, 540, 800_000),
                               ("f", 1920, 1080, 3_000_000)))  # fmt: skip
    assert choose_layer(layers, ALL, rendered=(448, 252)) == 0
    assert choose_layer(layers, ALL, rendered=(1280, 720)) == 2
    share = announced_layers((("q", 640, 400, 300_000), ("f", 2560, 1600, 2_500_000)))
    assert share[1] == LayerSpec(1280, 800, estimated_bitrate(1280, 800))  # h inferred
    assert choose_layer(share, ALL, rendered=(1000, 600)) == 1


def test_announced_rids_left_out_are_half_the_size_of_the_one_above() -> None:
    layers = announced_layers((("f", 640, 360, 1_200_000),))
    assert [(x.width, x.height) for x in layers] == [(160, 90), (320, 180), (640, 360)]
    assert layers[2].bitrate == 1_200_000
    assert layers[0].bitrate < layers[1].bitrate < layers[2].bitrate
    assert announced_layers(()) == DEFAULT_LAYERS


def test_nonsense_layers_are_refused_with_named_errors() -> None:
    with pytest.raises(BadLayers, match="layer q: 0x90 is not a video size"):
        announced_layers((("q", 0, 90, 150_000),))
    with pytest.raises(BadLayers, match=r"1\.\.8192 pixels"):
        announced_layers((("f", 100_000, 360, 1_000_000),))
    with pytest.raises(BadLayer):
        announced_layers((("x", 640, 360, 1_000_000),))
    with pytest.raises(BadLayers, match="max_bitrate 0 "):
        announced_layers((("f", 640, 360, 0),))
    with pytest.raises(BadLayers, match="max_bitrate"):
        announced_layers((("f", 640, 360, 10**12),))
    with pytest.raises(BadLayers, match="twice"):
        announced_layers((("h", 320, 180, 500_000), ("h", 320, 180, 500_000)))
    with pytest.raises(BadLayers, match="larger"):
        announced_layers((("q", 1280, 720, 150_000), ("f", 640, 360, 1_700_000)))


def test_the_link_estimate_weighs_the_announced_bitrates() -> None:
    """A falling REMB of 400 kbit/s is congestion for the defaults' f (1.7 Mbit/s), not
    for a 360p camera whose f is announced at 600 kbit/s."""
    small_f = announced_layers((("q", 160, 90, 100_000), ("h", 320, 180, 300_000),
                                ("f", 640, 360, 600_000)))  # fmt: skip
    for layers, stepped in ((DEFAULT_LAYERS, True), (small_f, False)):
        link = LinkEstimator(layers, now=0.0)
        link.on_report(1.0, remb=1_000_000, current=2)
        assert link.on_report(1.5, remb=400_000, current=2) is stepped


def test_learned_sizes_fill_in_and_contradictions_keep_the_defaults() -> None:
    assert learned_layers({}) == DEFAULT_LAYERS
    layers = learned_layers({2: (640, 360)})
    assert [(x.width, x.height) for x in layers] == [(160, 90), (320, 180), (640, 360)]
    assert layers[2].bitrate == estimated_bitrate(640, 360) == DEFAULT_LAYERS[1].bitrate
    assert learned_layers({0: (1280, 720), 2: (640, 360)}) == DEFAULT_LAYERS


def test_estimated_bitrates_follow_the_defaults_by_pixel_count() -> None:
    assert [estimated_bitrate(x.width, x.height) for x in DEFAULT_LAYERS] == [
        x.bitrate for x in DEFAULT_LAYERS
    ]
    assert 500_000 < estimated_bitrate(960, 540) < 1_700_000
    assert estimated_bitrate(1920, 1080) > 1_700_000
    assert 0 < estimated_bitrate(16, 16) < 150_000
