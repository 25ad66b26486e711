"""`stagecast bench stormclients`, small: the simulator's own costs are reported (no timing)."""

from __future__ import annotations

import math

import pytest

from stagecast.bench import stormclients
from stagecast.cli import BENCH_SUITES, bench_options


@pytest.mark.timeout(120)
async def test_the_simulator_alone_reports_its_cpu_per_join_and_per_frame() -> None:
    assert "stormclients" in BENCH_SUITES
    module, args = bench_options(
        "stormclients", ["--clients", "60", "--rounds", "3", "--runs", "1"]
    )
    assert module is stormclients
    results = {r.name: r for r in await stormclients.run(args)}
    for name in ("sim_cpu_us_per_join", "sim_cpu_us_per_frame"):
        assert results[name].unit == "us"
        assert math.isfinite(results[name].value) and results[name].value > 0, name
    # Every client joined and read every round (the notes give the smallest counts).
    assert "60 joined at least" in results["sim_cpu_us_per_join"].note
    assert "180 at least" in results["sim_cpu_us_per_frame"].note
