"""The dispatch table's decisions (pure: times come in as arguments)."""

from __future__ import annotations

import pytest

from schemas.agents import AgentDispatch, AgentWorkerBeat
from statekeeper.dispatch import MAX_DISPATCHES_PER_ROOM, DispatchTable, TooManyDispatches


def beat(
    worker_id: str, name: str = "assistant", jobs: tuple[str, ...] = (), capacity: int = 4
) -> AgentWorkerBeat:
    return AgentWorkerBeat(worker_id=worker_id, agent_name=name, jobs=jobs, capacity=capacity)


def job(job_id: str, room: str = "r", name: str = "assistant") -> AgentDispatch:
    return AgentDispatch(id=job_id, room_id=room, agent_name=name)


def test_the_least_loaded_live_worker_of_the_name_comes_first() -> None:
    table = DispatchTable(worker_timeout_ms=1000)
    table.beat(beat("AW_a"), now=0)
    table.beat(beat("AW_b"), now=0)
    table.beat(beat("AW_x", name="other"), now=0)
    for n in range(4):
        table.add(job(f"J{n}"))
        first = table.candidates("assistant", now=10)[0]
        table.reserve(f"J{n}", first)
        assert table.started(f"J{n}", first) is not None
    assert sorted(len(e.jobs) for e in table.workers.values() if e.agent_name == "assistant") == [
        2,
        2,
    ]
    assert table.candidates("missing", now=10) == []
    assert table.candidates("assistant", now=5000) == []  # both silent past the timeout


def test_a_full_worker_is_no_candidate() -> None:
    table = DispatchTable(worker_timeout_ms=1000)
    table.beat(beat("AW_a", capacity=1), now=0)
    table.add(job("J1"))
    table.started("J1", "AW_a")
    assert table.candidates("assistant", now=1) == []


def test_a_lost_workers_running_jobs_become_pending_and_are_returned() -> None:
    table = DispatchTable(worker_timeout_ms=1000)
    table.beat(beat("AW_a"), now=0)
    table.beat(beat("AW_b"), now=0)
    table.add(job("J1"))
    table.started("J1", "AW_a")
    table.beat(beat("AW_b"), now=1500)
    orphans = table.lost_workers(now=1500)
    assert [(j.id, j.worker_id, j.attempt) for j in orphans] == [("J1", "AW_a", 1)]
    assert [j.id for j in table.pending()] == ["J1"]
    assert list(table.workers) == ["AW_b"]
    moved = table.started("J1", "AW_b")
    assert moved is not None and (moved.state, moved.worker_id, moved.attempt) == (
        "running",
        "AW_b",
        2,
    )


def test_only_the_running_worker_can_end_a_job_and_only_once() -> None:
    table = DispatchTable(worker_timeout_ms=1000)
    table.beat(beat("AW_a"), now=0)
    table.add(job("J1"))
    table.started("J1", "AW_a")
    assert table.ended("J1", "AW_other") is None
    ended = table.ended("J1", "AW_a")
    assert ended is not None and ended.state == "ended"
    assert table.ended("J1", "AW_a") is None
    assert table.started("J1", "AW_a") is None
    assert [j.state for j in table.in_room("r")] == ["ended"]


def test_a_room_has_a_bounded_number_of_jobs() -> None:
    table = DispatchTable(worker_timeout_ms=1000)
    for n in range(MAX_DISPATCHES_PER_ROOM):
        table.add(job(f"J{n}"))
    with pytest.raises(TooManyDispatches) as caught:
        table.add(job("one-more"))
    assert caught.value.room_id == "r" and caught.value.limit == MAX_DISPATCHES_PER_ROOM
    table.add(job("elsewhere", room="r2"))
