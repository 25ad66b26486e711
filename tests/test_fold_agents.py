"""The fold on agent jobs: created, started, ended, lost, deleted; in snapshots and replays."""

from __future__ import annotations

from typing import Any

from schemas.agents import AgentJobEndedEvent, AgentJobStartedEvent, DispatchReply
from schemas.api import RoomReply
from schemas.client import Disconnect, Error
from schemas.codec import decode, encode
from schemas.log import (
    AgentJobSpec,
    DispatchCreated,
    DispatchDeleted,
    DispatchEnded,
    DispatchStarted,
    JoinRequested,
    LogEvent,
    RoomCreateRequested,
    RoomDeleteRequested,
)
from statekeeper.fold import apply
from statekeeper.fold.agents import WORKER_LOST, agent_identity
from statekeeper.fold.jobs import MAX_DISPATCHES_PER_ROOM
from statekeeper.outcomes import Direct, Outcome, PublicEvent
from statekeeper.snapshots import digest, pack_room, restore
from statekeeper.state import State

ROOM = "agents-room"


class Log:
    """Feeds events to the fold with increasing sequences, and keeps them for replays."""

    def __init__(self) -> None:
        self.state = State()
        self.seq = 0
        self.at = 1_000_000
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> list[Outcome]:
        self.seq += 1
        self.events.append(event)
        return apply(self.state, self.seq, event)

    def room(self, *agents: str) -> list[Outcome]:
        specs = tuple(AgentJobSpec(dispatch_id=f"AJ_{a}", agent_name=a) for a in agents)
        return self(
            RoomCreateRequested(
                room_id=ROOM, at=self.tick(), room_sid="RM_1", agents=specs, reply_to="api.r"
            )
        )

    def create(self, job_id: str, name: str = "assistant", **kw: Any) -> list[Outcome]:
        return self(
            DispatchCreated(
                room_id=ROOM,
                at=self.tick(),
                dispatch_id=job_id,
                agent_name=name,
                reply_to="api.d",
                **kw,
            )
        )

    def started(self, job_id: str, worker: str, attempt: int) -> list[Outcome]:
        return self(
            DispatchStarted(
                room_id=ROOM, at=self.tick(), dispatch_id=job_id, worker_id=worker, attempt=attempt
            )
        )

    def ended(self, job_id: str, worker: str, reason: str = "completed") -> list[Outcome]:
        return self(
            DispatchEnded(
                room_id=ROOM, at=self.tick(), dispatch_id=job_id, worker_id=worker, reason=reason
            )
        )

    def tick(self) -> int:
        self.at += 10
        return self.at

    def jobs(self) -> list[tuple[str, str, str, int]]:
        room = self.state.rooms[ROOM]
        return [(j.id, j.state, j.worker_id, j.attempt) for j in room.dispatches.values()]


def replies(out: list[Outcome]) -> list[Any]:
    return [o.message for o in out if isinstance(o, Direct)]


def public(out: list[Outcome]) -> list[Any]:
    return [o.message for o in out if isinstance(o, PublicEvent)]


def test_a_created_job_is_pending_open_and_answered() -> None:
    log = Log()
    log.room()
    out = log.create("AJ_1", metadata='{"lang":"fr"}')
    (reply,) = replies(out)
    assert isinstance(reply, DispatchReply)
    assert (reply.dispatch.id, reply.dispatch.state, reply.dispatch.metadata) == (
        "AJ_1",
        "pending",
        '{"lang":"fr"}',
    )
    assert reply.dispatch.created_at == log.at
    assert log.jobs() == [("AJ_1", "pending", "", 0)]
    assert log.state.open_jobs == {"AJ_1": ROOM}
    assert public(out) == []  # nothing public until a worker takes it


def test_a_job_for_a_missing_room_is_refused() -> None:
    log = Log()
    (refusal,) = replies(log.create("AJ_1"))
    assert isinstance(refusal, Error) and refusal.code == "ROOM_NOT_FOUND"
    assert log.state.open_jobs == {}


def test_creating_a_room_with_agents_adds_their_jobs_and_again_on_an_existing_room() -> None:
    log = Log()
    (reply,) = replies(log.room("assistant", "scribe"))
    assert isinstance(reply, RoomReply)
    assert log.jobs() == [("AJ_assistant", "pending", "", 0), ("AJ_scribe", "pending", "", 0)]
    log(RoomCreateRequested(room_id=ROOM, at=log.tick(), room_sid="RM_2", agents=(
        AgentJobSpec(dispatch_id="AJ_late", agent_name="assistant"),
    )))  # fmt: skip
    assert [j[0] for j in log.jobs()] == ["AJ_assistant", "AJ_scribe", "AJ_late"]
    assert log.state.rooms[ROOM].sid == "RM_1"


def test_a_room_has_a_bounded_number_of_jobs_and_the_same_id_twice_is_one_job() -> None:
    log = Log()
    log.room()
    for n in range(MAX_DISPATCHES_PER_ROOM):
        log.create(f"AJ_{n}")
    (again,) = replies(log.create("AJ_0"))
    assert isinstance(again, DispatchReply) and again.dispatch.id == "AJ_0"
    (refusal,) = replies(log.create("AJ_more"))
    assert isinstance(refusal, Error) and refusal.code == "RATE_LIMITED"
    assert len(log.jobs()) == MAX_DISPATCHES_PER_ROOM


def test_a_start_at_the_pending_attempt_runs_it_and_a_stale_one_changes_nothing() -> None:
    log = Log()
    log.room()
    log.create("AJ_1")
    (event,) = public(log.started("AJ_1", "AW_a", attempt=0))
    assert isinstance(event, AgentJobStartedEvent) and event.id == "AJ_1.1.started"
    assert (event.dispatch.worker_id, event.dispatch.attempt) == ("AW_a", 1)
    assert log.jobs() == [("AJ_1", "running", "AW_a", 1)]
    assert public(log.started("AJ_1", "AW_b", attempt=0)) == []  # a second acceptance
    assert public(log.started("AJ_1", "AW_b", attempt=1)) == []  # running: not pending
    assert public(log.started("AJ_gone", "AW_b", attempt=0)) == []
    assert log.jobs() == [("AJ_1", "running", "AW_a", 1)]


def test_only_the_running_worker_ends_a_job_and_only_once() -> None:
    log = Log()
    log.room()
    log.create("AJ_1")
    log.started("AJ_1", "AW_a", attempt=0)
    assert public(log.ended("AJ_1", "AW_other")) == []
    (event,) = public(log.ended("AJ_1", "AW_a", reason="failed: ValueError: x"))
    assert isinstance(event, AgentJobEndedEvent)
    assert (event.id, event.reason, event.dispatch.state) == (
        "AJ_1.1.ended",
        "failed: ValueError: x",
        "ended",
    )
    assert log.jobs() == [("AJ_1", "ended", "AW_a", 1)]
    assert log.state.open_jobs == {}
    assert public(log.ended("AJ_1", "AW_a")) == []
    assert public(log.started("AJ_1", "AW_a", attempt=1)) == []


def test_a_lost_worker_makes_its_job_pending_for_the_next_attempt() -> None:
    log = Log()
    log.room()
    log.create("AJ_1")
    log.started("AJ_1", "AW_a", attempt=0)
    (event,) = public(log.ended("AJ_1", "AW_a", reason=WORKER_LOST))
    assert isinstance(event, AgentJobEndedEvent) and event.reason == WORKER_LOST
    assert (event.dispatch.state, event.dispatch.worker_id) == ("running", "AW_a")  # as it was
    assert log.jobs() == [("AJ_1", "pending", "", 1)]
    assert log.state.open_jobs == {"AJ_1": ROOM}
    assert public(log.started("AJ_1", "AW_b", attempt=0)) == []  # the first attempt's offer
    (moved,) = public(log.started("AJ_1", "AW_b", attempt=1))
    assert isinstance(moved, AgentJobStartedEvent) and moved.id == "AJ_1.2.started"
    assert log.jobs() == [("AJ_1", "running", "AW_b", 2)]


def test_deleting_a_running_job_forgets_it_and_removes_its_agent() -> None:
    log = Log()
    log.room()
    log.create("AJ_1")
    log.create("AJ_2")
    log.started("AJ_1", "AW_a", attempt=0)
    log(JoinRequested(room_id=ROOM, at=log.tick(), sid="PA_agent", edge_id="E1",
                      participant_id=agent_identity("AJ_1"), kind="agent"))  # fmt: skip
    out = log(DispatchDeleted(room_id=ROOM, at=log.tick(), dispatch_id="AJ_1", reply_to="api.x"))
    (reply,) = replies([o for o in out if isinstance(o, Direct) and o.subject == "api.x"])
    assert isinstance(reply, DispatchReply) and reply.dispatch.state == "running"
    (ended,) = [m for m in public(out) if isinstance(m, AgentJobEndedEvent)]
    assert ended.reason == "deleted"
    assert any(isinstance(m, Disconnect) and m.reason == "REMOVED" for m in replies(out))
    assert agent_identity("AJ_1") not in log.state.rooms[ROOM].by_identity
    assert [j[0] for j in log.jobs()] == ["AJ_2"] and log.state.open_jobs == {"AJ_2": ROOM}
    again = log(DispatchDeleted(room_id=ROOM, at=log.tick(), dispatch_id="AJ_1", reply_to="a"))
    (refusal,) = replies(again)
    assert isinstance(refusal, Error) and refusal.code == "DISPATCH_NOT_FOUND"


def test_a_closed_room_leaves_no_open_job() -> None:
    log = Log()
    log.room("assistant")
    log.create("AJ_1")
    log(RoomDeleteRequested(room_id=ROOM, at=log.tick()))
    assert log.state.open_jobs == {}


def test_jobs_survive_a_snapshot_and_a_replay_gives_the_same_state() -> None:
    log = Log()
    log.room("assistant")
    log.create("AJ_1")
    log.create("AJ_2")
    log.started("AJ_1", "AW_a", attempt=0)
    log.started("AJ_2", "AW_b", attempt=0)
    log.ended("AJ_2", "AW_b")
    room = log.state.rooms[ROOM]
    restored = restore({ROOM: (log.seq, pack_room(room))}, (0,))
    assert restored.rooms[ROOM].dispatches == room.dispatches
    assert restored.open_jobs == {"AJ_assistant": ROOM, "AJ_1": ROOM}
    replayed = Log()
    for event in log.events:
        stored = decode(encode(event))  # through the wire, as the log stores them
        assert isinstance(stored, LogEvent)
        replayed(stored)
    assert digest(replayed.state) == digest(log.state)
    assert replayed.state.open_jobs == log.state.open_jobs
