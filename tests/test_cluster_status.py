"""`stagecast cluster status` on a real 3-node cluster, and its report from known rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig

from roomlog.log import RoomLog
from schemas import subjects
from schemas.log import LeaveRequested
from stagecast.cluster_cli import ConsumerRow, StreamRow, problems, render
from tests.cluster_fixtures import nats_cluster


def status(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stagecast.cli", "cluster", "status", "--nats-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def row_of(output: str, *first: str) -> list[str]:
    """The one line of `output` whose first words are `first`, split in words."""
    rows = [line.split() for line in output.splitlines()]
    found = [row for row in rows if row[: len(first)] == list(first)]
    assert len(found) == 1, output
    return found[0]


def test_the_report_names_leaderless_and_missing_streams() -> None:
    log = StreamRow("STAGECAST_LOG", 3, "", ("n2 current", "n3 lag 4"), 10, 10)
    assert problems([log]) == [
        "STAGECAST_LOG has no leader (an election is under way, or no majority)",
        "STAGECAST_EVENTS does not exist (no edge or statekeeper has started yet)",
    ]
    lines = render([log], [ConsumerRow("STAGECAST_LOG", "reader", 1, 7, 0, 3)])
    assert "(none)" in lines[2] and "n3 lag 4" in lines[2]
    assert lines[5].split() == ["STAGECAST_LOG", "reader", "1", "7", "0", "3"]
    assert lines[-1].startswith("problem: STAGECAST_EVENTS does not exist")


async def test_status_shows_replicas_leaders_and_consumer_lag(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path) as cluster:
        before = status(cluster.url)
        assert before.returncode == 1
        assert "problem: STAGECAST_LOG does not exist" in before.stdout

        nc = await cluster.client()
        try:
            js = nc.jetstream()
            room_log = RoomLog(js, replicas=3)
            await room_log.ensure()
            await room_log.append_many(
                [(LeaveRequested(room_id="r", at=1, sid=f"s{i}"), f"m{i}") for i in range(5)]
            )
            await js.add_consumer(
                subjects.LOG_STREAM,
                ConsumerConfig(durable_name="audit", ack_policy=AckPolicy.EXPLICIT),
            )
            leader = await cluster.wait_replicated(subjects.LOG_STREAM, 3)
            await cluster.wait_replicated(subjects.EVENTS_STREAM, 3)
        finally:
            await nc.close()

        done = status(cluster.url)
        assert done.returncode == 0, done.stdout + done.stderr
        log_row = row_of(done.stdout, subjects.LOG_STREAM, "3")
        assert log_row[1:5] == ["3", leader, "5", "5"]
        followers = " ".join(log_row[5:])
        assert followers.count("current") == 2 and leader not in followers
        assert row_of(done.stdout, subjects.EVENTS_STREAM)[1] == "3"
        consumer = row_of(done.stdout, subjects.LOG_STREAM, "audit")
        assert consumer[2:4] == ["3", "5"]  # the stream's replicas; 5 messages not read yet
        assert "problem" not in done.stdout

        unreachable = status("nats://127.0.0.1:1")
        assert unreachable.returncode == 2
        assert "cannot reach NATS" in unreachable.stdout
