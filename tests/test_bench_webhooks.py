"""`stagecast bench webhooks`, small: it runs the real sender and reports every figure."""

from __future__ import annotations

import pytest

from stagecast.bench import webhooks
from stagecast.cli import BENCH_SUITES, bench_options


@pytest.mark.timeout(120)
async def test_small_webhook_bench_reports_every_figure() -> None:
    assert "webhooks" in BENCH_SUITES
    argv = ["--events", "200", "--rooms", "5", "--rate", "50", "--seconds", "0.5"]
    module, args = bench_options("webhooks", argv)
    assert module is webhooks
    results = {r.name: r.value for r in await webhooks.run(args)}
    assert set(results) == {
        "webhooks_burst_events_per_s",
        "webhooks_sender_cpu_per_event",
        "webhooks_latency_p50",
        "webhooks_latency_p99",
    }
    assert all(value > 0 for value in results.values()), results
    assert results["webhooks_latency_p50"] <= results["webhooks_latency_p99"]
