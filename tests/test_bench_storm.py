"""`stagecast bench storm`, small: the figures exist and the tiers hold (no timing checks).

The storm runs for real (nats-server, statekeeper and edge processes, one client process)
through the suite's own option parser, as `stagecast bench storm` would run it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import pytest

from edge.config import default_max_connections
from schemas.client import CountsChanged, Join, ParticipantLeft
from schemas.codec import encode
from schemas.models import Counts
from stagecast.bench import Result, storm
from stagecast.bench.simclients import PARTICIPANT_TAGS, Fleet, ProcResults, Wave, peek_tag
from stagecast.bench.stormhost import SPARE_FDS, nofile_hard, plan_processes
from stagecast.cli import BENCH_SUITES
from tests.edge_fixtures import Stack, edge_stack

FIGURES = {
    "joins_per_s",
    "join_p50_ms",
    "join_p99_ms",
    "participant_events_per_viewer",
    "count_events_per_viewer_per_s",
    "count_lag_p99_ms",
    "count_never_exact",
    "edge_rss_mb",
    "statekeeper_rss_mb",
    "edge_cpu_s",
    "statekeeper_cpu_s",
    "naive_participant_messages",
    "naive_message_ratio",
    "told_to_wait",
    "upgrades_refused_busy",
    "retries",
    "edge_liveness_drops",
    "edge_loop_lag_max_s",
}


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stagecast bench storm")
    storm.add_arguments(parser)
    args = parser.parse_args(argv)
    args.suite = "storm"
    return args


def test_peek_tag_reads_the_tag_without_unpacking() -> None:
    assert peek_tag(encode(Join(id=1, token="t" * 300))) == b"join"
    assert peek_tag(encode(CountsChanged(seq=3, counts=Counts(total=9)))) == b"counts"
    assert peek_tag(encode(ParticipantLeft(seq=1, sid="PA_x", participant_id="p"))) in (
        PARTICIPANT_TAGS
    )
    assert peek_tag(b"\x82\xa1v\x01\xa1t\xa4pong") == b"pong"  # "t" not first: unpacked
    assert peek_tag(b"\xc1") == b""


@pytest.mark.timeout(120)
async def test_small_storm_reports_every_figure_and_keeps_viewers_quiet(tmp_path: Path) -> None:
    assert "storm" in BENCH_SUITES
    args = options(
        "--speakers", "5", "--viewers", "50", "--rate", "200",
        "--naive", "--naive-viewers", "20",
        "--count-wait", "15", "--time-limit", "90", "--phase-s", "1", "--data-dir", str(tmp_path),
    )  # fmt: skip
    results: list[Result] = await storm.run(args)
    figures = {r.name: r.value for r in results}
    assert figures.keys() >= FIGURES, FIGURES - figures.keys()
    assert figures["join_failures"] == 0
    assert figures["edge_liveness_drops"] == 0
    assert figures["participant_events_per_viewer"] == 5
    assert figures["participant_frames_per_viewer"] == 0  # speakers were in the snapshot
    assert figures["count_never_exact"] == 0
    assert figures["naive_participant_messages"] == 25 * 24  # everyone hears of everyone
    assert figures["naive_message_ratio"] > 1


async def one_wave(stack: Stack, viewers: int) -> tuple[dict[str, float], ProcResults]:
    """`viewers` simulated viewers join `stack`'s edge at 1,000/s (one process, 60 s at
    most): the wave's outcome and the process's results."""
    fleet = Fleet(0, 1, [stack.ws_url], ["127.0.0.1"])
    token = stack.token(None, viewer=True)
    wave = Wave("viewers", (token,), viewers, 1000.0, asyncio.get_running_loop().time(), True)
    done = await fleet.run_wave(wave, 60.0)
    results = fleet.results(0.0, time.monotonic())
    await fleet.close(5.0)
    return done, results


async def test_simulated_clients_told_to_wait_join_again_on_the_same_socket(tmp_path: Path) -> None:
    """An edge with one join in flight at most: the simulated clients answered SERVER_BUSY
    send their join again after the hint, all get in, and say how many had to wait."""
    async with edge_stack(tmp_path, max_joins_in_flight=1, busy_retry_after=0.05) as stack:
        done, results = await one_wave(stack, 30)
    assert done["joined"] == 30 and results.failures == {}
    assert results.told_to_wait > 0 and results.busy_answers >= results.told_to_wait


async def test_simulated_clients_refused_at_the_upgrade_connect_again_after_the_hint(
    tmp_path: Path,
) -> None:
    """An edge that takes 2 sockets waiting to join at most answers the other upgrades 503:
    the simulated clients connect again after the hint, all get in, and say how many were
    refused."""
    async with edge_stack(tmp_path, max_unjoined_sockets=2, upgrade_retry_after=0.05) as stack:
        done, results = await one_wave(stack, 30)
    assert done["joined"] == 30 and results.failures == {}
    assert results.refused_upgrades > 0
    assert results.upgrade_refusals >= results.refused_upgrades


async def test_simulated_viewers_read_the_counts_a_real_edge_sends(tmp_path: Path) -> None:
    """Viewers join a real edge in two waves; every one ends up holding the room's final
    total from the counts frames, and the process unpacked only the distinct ones (the
    others were the same bytes, counted by look-up)."""
    async with edge_stack(tmp_path) as stack:
        fleet = Fleet(0, 1, [stack.ws_url], ["127.0.0.1"])
        token = stack.token(None, viewer=True)
        loop = asyncio.get_running_loop()
        first = await fleet.run_wave(Wave("a", (token,), 20, 500.0, loop.time(), True), 20.0)
        second = await fleet.run_wave(Wave("b", (token,), 10, 500.0, loop.time(), True), 20.0)
        fleet.set_target(30)
        deadline = loop.time() + 15.0
        while fleet.exact < fleet.joined and loop.time() < deadline:
            await asyncio.sleep(0.05)
        results = fleet.results(0.0, time.monotonic())
        closed = await fleet.close(5.0)
    assert first["joined"] == 20 and second["joined"] == 10 and results.failures == {}
    assert fleet.exact == 30 and results.never_exact == 0 and not results.drops
    assert fleet.count_frames >= 20  # the first wave heard of the second at least
    assert 0 < fleet.counts_unpacked < fleet.count_frames
    assert closed == 30


def test_the_edges_planned_fit_the_clients_under_their_connection_caps() -> None:
    """Each edge serves at most its cap at the raised descriptor limit (15,876 at 20,000),
    less than `hard - 512`: a storm sized by descriptors alone refused the last clients."""
    hard = nofile_hard()
    for clients in (10_045, 100_045):
        edges, procs = plan_processes(clients, 0, 0)
        assert edges * min(hard - SPARE_FDS, default_max_connections(hard)) >= clients
        assert procs * (hard - SPARE_FDS) >= clients
    assert plan_processes(100_045, 2, 3) == (2, 3)  # given counts are used as they are
