"""`stagecast bench storm`'s unit costs, small: each figure exists and is sane (no timing).

The storm runs for real (nats-server, statekeeper, two edges, two client processes) with
short idle and counts phases.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from stagecast.bench import storm
from stagecast.cli import bench_options

COSTS = (
    "edge_cpu_us_per_join",
    "statekeeper_cpu_us_per_join",
    "client_cpu_us_per_join",
    "edge_kib_per_viewer",
    "edge_idle_us_per_viewer_s",
    "statekeeper_kib_per_viewer",
    "counts_phase_frames",
    "counts_phase_frames_queued",
    "count_us_per_socket_frame",
    "client_cpu_us_per_frame",
    "edge_cpu_us_per_join_net",
    "client_cpu_us_per_join_net",
)


@pytest.mark.timeout(150)
async def test_small_storm_reports_the_costs_per_join_viewer_and_counts_frame(
    tmp_path: Path,
) -> None:
    # Enough joins that each process's CPU over the join phase spans several clock ticks
    # (psutil counts 10 ms ticks; 40 joins once measured the statekeeper at 0)
    viewers = 400
    argv = [
        "--speakers", "2", "--viewers", str(viewers), "--rate", "400",
        "--edges", "2", "--client-procs", "2", "--phase-s", "2", "--churn-rate", "8",
        "--count-wait", "15", "--time-limit", "100", "--data-dir", str(tmp_path),
    ]  # fmt: skip
    module, args = bench_options("storm", argv)
    assert module is storm
    results = {r.name: r for r in await storm.run(args)}
    missing = [name for name in COSTS if name not in results]
    assert not missing
    assert all(math.isfinite(results[name].value) for name in COSTS)
    assert results["join_failures"].value == 0
    assert results["dropped_after_join"].value == 0  # the churners' leaves do not count
    assert results["participant_events_per_viewer"].value == 2
    for name in ("edge_cpu_us_per_join", "statekeeper_cpu_us_per_join", "client_cpu_us_per_join"):
        assert results[name].value > 0, name
        assert results[name].unit == "us"
    # The churn moved the count: every held socket got counts frames, by both tallies.
    assert results["counts_phase_frames"].value >= viewers
    assert results["counts_phase_frames_queued"].value >= viewers
    assert results["edge_kib_per_viewer"].unit == "KiB"
