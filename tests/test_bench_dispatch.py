"""`stagecast bench dispatch`, small: real processes, every figure, no job offered again."""

from __future__ import annotations

import pytest

from stagecast.bench import dispatch
from stagecast.cli import BENCH_SUITES, bench_options


@pytest.mark.timeout(180)
async def test_small_dispatch_bench_reports_every_figure() -> None:
    assert "dispatch" in BENCH_SUITES
    module, args = bench_options("dispatch", ["--jobs", "4", "--rounds", "1"])
    assert module is dispatch
    results = {r.name: r.value for r in await dispatch.run(args)}
    assert set(results) == {
        "metadata_rtt_ms",
        "dispatch_rtt_ms",
        "dispatch_vs_metadata_ratio",
        "dispatch_to_running_ms",
        "spread_jobs",
        "restart_room_listed_s",
        "restart_jobs_listed_s",
        "jobs_restarted_after_restart",
    }
    assert results["jobs_restarted_after_restart"] == 0
    assert results["spread_jobs"] == 0  # 4 jobs, 2 workers: 2 each
    assert results["restart_jobs_listed_s"] >= results["restart_room_listed_s"] > 0


async def test_the_bench_refuses_out_of_range_options() -> None:
    _module, args = bench_options("dispatch", ["--jobs", "33"])
    with pytest.raises(SystemExit, match="--jobs"):
        await dispatch.run(args)
