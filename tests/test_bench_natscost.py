"""`stagecast bench natscost`, small: every figure, and fast batches answered per flush."""

from __future__ import annotations

import pytest

from stagecast.bench import natscost
from stagecast.cli import BENCH_SUITES, bench_options


@pytest.mark.timeout(120)
async def test_small_natscost_bench_reports_every_figure() -> None:
    assert "natscost" in BENCH_SUITES
    module, args = bench_options("natscost", ["--events", "600", "--flush", "200", "--runs", "1"])
    assert module is natscost
    results = {r.name: r.value for r in await natscost.run(args)}
    ways = ("acked", "batched")
    assert set(results) == {
        "pubevents_cpu_ratio",
        *(f"pubevents_{w}_{f}" for w in ways for f in ("cpu_us_per_event", "s")),
        *(f"pubevents_{w}_server_cpu_us_per_event" for w in ways),
        *(f"pubevents_{w}_msgs_in_per_event" for w in ways),
        "parse_us_per_delivery",
    }
    assert results["pubevents_acked_msgs_in_per_event"] == 1.0  # an ack each
    # A flush of 200: the first event's answer and the commit's, nothing per event.
    assert results["pubevents_batched_msgs_in_per_event"] == 2 / 200
