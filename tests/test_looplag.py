"""The edge's loop-lag record (pure): what the liveness sweep forgives."""

from __future__ import annotations

import pytest

from edge.looplag import LoopLag


def test_delays_within_the_window_are_summed_and_older_ones_forgotten() -> None:
    lag = LoopLag(window=10.0)
    lag.record(1.0, 0.5)
    lag.record(2.0, 0.0)  # on time: nothing to forgive
    lag.record(5.0, 2.0)
    assert lag.stalled(5.0) == pytest.approx(2.5)
    assert lag.max_recent == pytest.approx(2.0)
    assert lag.stalled(11.5) == pytest.approx(2.0)  # the first delay left the window
    assert lag.stalled(16.0) == 0.0
    assert lag.max_recent == 0.0


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        LoopLag(window=0.0)
