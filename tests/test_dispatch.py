"""The dispatch table's decisions (pure: times come in as arguments)."""

from __future__ import annotations

from schemas.agents import AgentDispatch, AgentWorkerBeat
from statekeeper.dispatch import FORGET_AFTER, OFFER_GRACE_MS, Decision, DispatchTable

T = 1000
"""The worker timeout of these tables (ms)."""
LATER = 10 * T
"""A time past every start grace."""


def beat(
    worker_id: str, name: str = "assistant", jobs: tuple[str, ...] = (), capacity: int = 4
) -> AgentWorkerBeat:
    return AgentWorkerBeat(worker_id=worker_id, agent_name=name, jobs=jobs, capacity=capacity)


def job(job_id: str, state: str = "pending", worker: str = "", attempt: int = 0) -> AgentDispatch:
    return AgentDispatch(
        id=job_id,
        room_id="r",
        agent_name="assistant",
        state=state,  # type: ignore[arg-type]
        worker_id=worker,
        attempt=attempt,
    )


def test_the_least_loaded_live_worker_of_the_name_comes_first() -> None:
    table = DispatchTable(worker_timeout_ms=T)
    table.beat(beat("AW_a", jobs=("J1", "J2")), now=LATER)
    table.beat(beat("AW_b", jobs=("J3",)), now=LATER)
    table.beat(beat("AW_x", name="other"), now=LATER)
    assert table.candidates("assistant", now=LATER) == ["AW_b", "AW_a"]
    assert table.max_jobs("assistant", now=LATER) == 2
    table.took("J4", "AW_b")
    assert table.max_jobs("assistant", now=LATER) == 3  # both run two now
    assert table.candidates("missing", now=LATER) == []
    assert table.max_jobs("missing", now=LATER) is None
    assert table.candidates("assistant", now=LATER + 2 * T) == []  # both silent past it


def test_a_full_worker_is_no_candidate() -> None:
    table = DispatchTable(worker_timeout_ms=T)
    table.beat(beat("AW_a", capacity=1, jobs=("J1",)), now=LATER)
    assert table.candidates("assistant", now=LATER) == []
    assert table.max_jobs("assistant", now=LATER) is None


def test_a_beat_replaces_what_the_worker_runs() -> None:
    table = DispatchTable(worker_timeout_ms=T)
    table.beat(beat("AW_a", jobs=("J1", "J2")), now=LATER)
    table.beat(beat("AW_a", jobs=("J2",)), now=LATER + 1)
    assert table.workers["AW_a"].jobs == {"J2"}
    assert table.reported == {"J2": "AW_a"}


def test_a_new_table_waits_a_beat_before_offering_and_a_timeout_before_judging() -> None:
    table = DispatchTable(worker_timeout_ms=3 * T, started_at=LATER)
    pending, running = job("J1"), job("J2", "running", "AW_gone", 1)
    assert table.decide(pending, now=LATER + OFFER_GRACE_MS) == Decision("none")
    assert table.decide(pending, now=LATER + OFFER_GRACE_MS + 1) == Decision("offer")
    assert table.decide(running, now=LATER + 3 * T) == Decision("none")
    assert table.decide(running, now=LATER + 3 * T + 1) == Decision("lost", "AW_gone")


def test_a_pending_job_a_live_worker_names_is_adopted_not_offered() -> None:
    table = DispatchTable(worker_timeout_ms=T, started_at=LATER)
    table.beat(beat("AW_a", jobs=("J1",)), now=LATER + 1)
    assert table.decide(job("J1"), now=LATER + 2) == Decision("adopt", "AW_a")
    assert table.decide(job("J1"), now=LATER + 2 * T) == Decision("offer")  # AW_a fell silent
    table.beat(beat("AW_b", name="other", jobs=("J2",)), now=LATER + 2 * T)
    assert table.decide(job("J2"), now=LATER + 2 * T) == Decision("offer")  # not its name


def test_a_running_job_is_kept_while_its_worker_beats_with_it() -> None:
    table = DispatchTable(worker_timeout_ms=T)
    running = job("J1", "running", "AW_a", 1)
    for n in range(5):
        table.beat(beat("AW_a", jobs=("J1",)), now=LATER + n * T)
        assert table.decide(running, now=LATER + n * T) == Decision("none")
    assert table.decide(running, now=LATER + 5 * T + 1) == Decision("lost", "AW_a")


def test_a_job_its_live_worker_stopped_naming_ended_unreported_after_a_timeout() -> None:
    table = DispatchTable(worker_timeout_ms=T)
    running = job("J1", "running", "AW_a", 1)
    table.beat(beat("AW_a"), now=LATER)
    assert table.decide(running, now=LATER) == Decision("none")  # absent from now
    table.beat(beat("AW_a"), now=LATER + T)
    assert table.decide(running, now=LATER + T) == Decision("none")
    table.beat(beat("AW_a"), now=LATER + T + 1)
    assert table.decide(running, now=LATER + T + 1) == Decision("unreported", "AW_a")


def test_a_job_named_again_before_the_timeout_is_not_ended() -> None:
    table = DispatchTable(worker_timeout_ms=T)
    running = job("J1", "running", "AW_a", 1)
    table.beat(beat("AW_a"), now=LATER)  # a beat sent before it accepted
    assert table.decide(running, now=LATER) == Decision("none")
    table.beat(beat("AW_a", jobs=("J1",)), now=LATER + T // 2)
    assert table.decide(running, now=LATER + T // 2) == Decision("none")
    assert table.decide(running, now=LATER + T + 1) == Decision("none")


def test_long_silent_workers_are_forgotten() -> None:
    table = DispatchTable(worker_timeout_ms=T)
    table.beat(beat("AW_a", jobs=("J1",)), now=0)
    table.beat(beat("AW_b"), now=FORGET_AFTER * T)
    assert table.forget_silent(now=FORGET_AFTER * T + 1) == ["AW_a"]
    assert list(table.workers) == ["AW_b"] and table.reported == {}
