"""Layer choice per subscriber: requested quality, rendered size and the link estimate."""

from __future__ import annotations

import pytest

from forwarder.errors import BadQuality
from forwarder.layers import (
    BASE_HOLD,
    DEFAULT_LAYERS,
    MAX_HOLD,
    LinkEstimator,
    Quality,
    choose_layer,
    layer_for_bitrate,
    layer_for_size,
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
