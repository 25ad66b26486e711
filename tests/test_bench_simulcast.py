"""`stagecast bench media`'s simulcast_switch_ms: every switch is timed, in both directions."""

from __future__ import annotations

from stagecast.bench.simulcast import simulcast_figures, switch_times


async def test_each_switch_is_timed() -> None:
    times = await switch_times(2)  # low, then high again
    assert len(times) == 2 and all(t > 0 for t in times)


async def test_the_figures_are_p50_and_p99_and_none_when_off() -> None:
    results = await simulcast_figures(1)
    assert [r.name for r in results] == ["simulcast_switch_ms_p50", "simulcast_switch_ms_p99"]
    assert await simulcast_figures(0) == []
