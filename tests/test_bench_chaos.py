"""`stagecast bench chaos` at a tiny size: the cluster loses no acknowledged write and
stores none twice while the room log's stream leader is SIGKILLed."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from schemas import subjects
from stagecast.bench import chaos
from stagecast.bench.chaosload import longest_gap
from stagecast.bench.chaosmedia import FLOWING_FRAMES, flowing_again, longest_silence
from tests.test_store import PG_URL


def test_rooms_fall_in_distinct_partitions_first() -> None:
    rooms = chaos.rooms_over_partitions(10, 8)
    assert len(set(rooms)) == 10
    assert [subjects.partition_of(r, 8) for r in rooms[:8]] == list(range(8))


def test_the_longest_gap_counts_the_edges_of_the_window() -> None:
    assert longest_gap([], 0.0, 4.0) == 4.0
    assert longest_gap([1.0, 1.5, 9.0], 0.0, 4.0) == 2.5
    assert longest_gap([0.5, 3.5], 0.0, 4.0) == 3.0


def test_media_flows_again_only_after_a_silence_that_ends_past_the_kill() -> None:
    before = [i / 30 for i in range(300)]  # 0..10 s at 30 fps, the kill at 10 s
    assert flowing_again(before, 10.0) is None  # no silence yet
    after = [14.0 + i / 30 for i in range(FLOWING_FRAMES + 5)]
    frames = before + after
    assert flowing_again(frames[: len(before) + FLOWING_FRAMES - 1], 10.0) is None
    assert flowing_again(frames, 10.0) == after[FLOWING_FRAMES - 1]
    assert longest_silence(frames, 9.0, after[FLOWING_FRAMES - 1]) == 14.0 - before[-1]
    assert longest_silence([], 9.0, 12.0) == 3.0
    early = [i / 30 for i in range(150)] + [7.0 + i / 30 for i in range(200)]
    assert flowing_again(early, 10.0) is None  # a silence that ended before the kill


def test_bad_options_are_refused_by_name() -> None:
    parser = argparse.ArgumentParser()
    chaos.add_arguments(parser)
    args = parser.parse_args(["--database-url", "sqlite+aiosqlite:///x.db"])
    with pytest.raises(SystemExit, match="PostgreSQL is required"):
        asyncio.run(chaos.run(args))
    args = parser.parse_args(["--database-url", "postgresql://x/y", "--faults", "moon"])
    with pytest.raises(SystemExit, match="unknown faults"):
        asyncio.run(chaos.run(args))


@pytest.mark.postgres
async def test_a_stream_leader_kill_loses_doubles_and_refuses_no_write(
    tmp_path: Path,
) -> None:
    if not PG_URL:
        pytest.skip("set STAGECAST_TEST_POSTGRES_URL to run on PostgreSQL")
    parser = argparse.ArgumentParser()
    chaos.add_arguments(parser)
    args = parser.parse_args(
        [
            *("--database-url", PG_URL, "--data-dir", str(tmp_path)),
            *("--clients", "40", "--speakers", "8", "--period", "1", "--steady", "2"),
            *("--faults", "stream_leader"),
        ]
    )
    results = {r.name: r.value for r in await chaos.run(args)}
    assert results["clients"] == 40
    assert results["writes_acked"] > 40  # the load ran, and every client wrote after the kill
    assert results["acked_lost_stream_leader"] == 0
    assert results["duplicated_stream_leader"] == 0
    assert results["writes_refused_stream_leader"] == 0  # the SDK sent them again
    assert results["acked_lost"] == 0 and results["duplicated"] == 0
    assert results["data_doubled"] == 0
    assert results["counts_exact_stream_leader"] == 1.0
    assert results["recover_s_stream_leader"] != float("inf")
