"""`stagecast bench dataflood`, small: every figure exists and the budget bounds the flood.

The flood runs for real (nats-server, statekeeper and edge processes, raw WebSocket viewers)
through the suite's own option parser, as `stagecast bench dataflood` would run it.
"""

from __future__ import annotations

import pytest

from stagecast.bench import dataflood
from stagecast.cli import BENCH_SUITES, bench_options

MODE_FIGURES = (
    "acked",
    "rate_limited",
    "edge_data_mb",
    "edge_data_mb_per_s",
    "viewer_mb",
    "edge_cpu_s",
    "viewers_closed",
)


@pytest.mark.timeout(180)
async def test_small_data_flood_reports_every_figure_and_the_budget_cuts_the_bytes() -> None:
    assert "dataflood" in BENCH_SUITES
    argv = ["--viewers", "10", "--seconds", "1", "--rate", "40", "--drain", "5"]
    module, args = bench_options("dataflood", argv)
    assert module is dataflood
    results = {r.name: r.value for r in await dataflood.run(args)}
    expected = {f"{mode}_{name}" for mode in ("nobudget", "budget") for name in MODE_FIGURES}
    assert set(results) == expected | {"flood_cost_ratio"}
    sent = 40
    assert (results["nobudget_acked"], results["nobudget_rate_limited"]) == (sent, 0)
    assert results["budget_acked"] + results["budget_rate_limited"] == sent
    assert results["budget_rate_limited"] > 0
    # What the edge wrote is what the viewers read, and the budget made it less.
    assert results["budget_edge_data_mb"] < results["nobudget_edge_data_mb"]
    assert results["flood_cost_ratio"] > 1
    assert results["nobudget_viewers_closed"] == results["budget_viewers_closed"] == 0
