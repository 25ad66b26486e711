"""`stagecast bench faults`, small: every figure exists and no fault loses anything.

The bench runs for real (nats-server, statekeeper and two edge processes, SDK clients in
this process), with short steady phases and one 2 s NATS outage. The goals it reports
(nothing acknowledged lost, nobody removed, no flap, every resumed sid kept) are checked;
its recovery times are reported, never asserted.
"""

from __future__ import annotations

import argparse

import pytest

from stagecast.bench import faults
from stagecast.cli import BENCH_SUITES

pytestmark = pytest.mark.slow


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stagecast bench faults")
    faults.add_arguments(parser)
    return parser.parse_args(argv)


async def test_a_small_fault_bench_loses_nothing_and_removes_nobody() -> None:
    assert "faults" in BENCH_SUITES
    args = options("--speakers", "3", "--viewers", "6", "--steady", "2", "--nats-outages", "2")
    results = {r.name: r.value for r in await faults.run(args)}
    phases = ("statekeeper", "edge", "nats_2s")
    for phase in phases:
        assert f"recover_s_{phase}" in results
        assert results[f"acked_lost_{phase}"] == 0
        assert results[f"wrongly_removed_{phase}"] == 0
        assert results[f"flaps_{phase}"] == 0
    assert results["resumed_same_sid_ratio"] == 1.0
    assert results["writes_acked"] >= 9 * len(phases)  # every client's probe, each phase
