"""Agent dispatch decisions, without IO: which workers are alive, how loaded, and what to do
with each open job.

The jobs themselves are room state (`statekeeper.fold.agents`); `DispatchTable` keeps what
only the workers' heartbeats tell: who is alive, which jobs each says it runs, how many it
takes. Times come in as arguments (ms), so every decision is a plain function of what it
was told. The shell (`statekeeper.agents`) offers jobs over NATS and appends what happened
to the room log.

A new table (a statekeeper that just started) has heard no heartbeat yet: it judges no
worker lost before `worker_timeout_ms` has passed since it started, and offers no job
before `OFFER_GRACE_MS` (a beat or so), so that a job whose worker is alive is taken back
from the worker's beat (`adopt`) rather than offered to another.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from schemas.agents import WORKER_BEAT_INTERVAL, AgentDispatch, AgentWorkerBeat
from statekeeper.fold.jobs import MAX_DISPATCHES_PER_ROOM

OFFER_GRACE_MS = int(WORKER_BEAT_INTERVAL * 1500)
"""How long a new table waits for beats before it offers jobs (capped by the timeout)."""

FORGET_AFTER = 10
"""A worker silent for this many timeouts is forgotten (its jobs were judged long before)."""

Action = Literal["none", "offer", "adopt", "lost", "unreported"]


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one open job: nothing; offer it; record that `worker_id` (whose beat
    names it) runs it; or end its run on `worker_id`, lost (silent) or unreported (alive,
    but its beats have not named the job for longer than the timeout: the job ended while
    no statekeeper heard the report)."""

    action: Action
    worker_id: str = ""


NOTHING = Decision("none")


@dataclasses.dataclass(slots=True)
class WorkerEntry:
    worker_id: str
    agent_name: str
    capacity: int
    last_beat: int
    jobs: set[str] = dataclasses.field(default_factory=set)
    """The jobs its last beat named, and those it took since."""


class DispatchTable:
    """Workers by id, as their beats tell, and the decisions about jobs that follow."""

    def __init__(self, worker_timeout_ms: int, started_at: int = 0) -> None:
        self.worker_timeout_ms = worker_timeout_ms
        self.started_at = started_at
        self.workers: dict[str, WorkerEntry] = {}
        self.reported: dict[str, str] = {}
        """Job id -> the worker whose last beat named it."""
        self._absent: dict[str, int] = {}
        """Running job id -> since when its worker's beats do not name it."""

    # ------------------------------------------------------------------ workers

    def beat(self, beat: AgentWorkerBeat, now: int) -> bool:
        """A worker is alive and runs the jobs it names; True if it is new to the table."""
        entry = self.workers.get(beat.worker_id)
        new = entry is None
        if entry is None:
            entry = self.workers[beat.worker_id] = WorkerEntry(
                beat.worker_id, beat.agent_name, beat.capacity, now
            )
        for job_id in entry.jobs - set(beat.jobs):
            if self.reported.get(job_id) == beat.worker_id:
                del self.reported[job_id]
        entry.last_beat = now
        entry.capacity = beat.capacity
        entry.jobs = set(beat.jobs)
        for job_id in beat.jobs:
            self.reported[job_id] = beat.worker_id
        return new

    def live(self, worker_id: str, now: int) -> bool:
        entry = self.workers.get(worker_id)
        return entry is not None and now - entry.last_beat <= self.worker_timeout_ms

    def forget_silent(self, now: int) -> list[str]:
        """Drop the workers silent for `FORGET_AFTER` timeouts (memory: `decide` judges a
        worker lost after one)."""
        limit = FORGET_AFTER * self.worker_timeout_ms
        gone = [w for w, e in self.workers.items() if now - e.last_beat > limit]
        for worker_id in gone:
            entry = self.workers.pop(worker_id)
            for job_id in entry.jobs:
                if self.reported.get(job_id) == worker_id:
                    del self.reported[job_id]
        return gone

    def took(self, job_id: str, worker_id: str) -> None:
        """`worker_id` accepted the job: count it against the worker at once."""
        entry = self.workers.get(worker_id)
        if entry is not None:
            entry.jobs.add(job_id)
        self.reported[job_id] = worker_id
        self._absent.pop(job_id, None)

    def candidates(
        self, agent_name: str, now: int, exclude: frozenset[str] = frozenset()
    ) -> list[str]:
        """Live workers of `agent_name` with room for a job, least loaded first."""
        live = [
            e
            for e in self.workers.values()
            if e.agent_name == agent_name
            and e.worker_id not in exclude
            and now - e.last_beat <= self.worker_timeout_ms
            and len(e.jobs) < e.capacity
        ]
        live.sort(key=lambda e: (len(e.jobs), e.worker_id))
        return [e.worker_id for e in live]

    def max_jobs(self, agent_name: str, now: int) -> int | None:
        """The offer's `max_jobs`: one more than the least loaded live worker of the name
        with room runs, so only such a worker takes it (None: no such worker)."""
        candidates = self.candidates(agent_name, now)
        if not candidates:
            return None
        return len(self.workers[candidates[0]].jobs) + 1

    # ------------------------------------------------------------------ jobs

    def may_judge(self, now: int) -> bool:
        """Long enough since the start for every live worker to have beaten."""
        return now - self.started_at > self.worker_timeout_ms

    def may_offer(self, now: int) -> bool:
        """Long enough since the start for a job's live worker to have named it."""
        return now - self.started_at > min(OFFER_GRACE_MS, self.worker_timeout_ms)

    def decide(self, job: AgentDispatch, now: int) -> Decision:
        """What to do with one open job now (see `Decision`)."""
        if job.state == "pending":
            self._absent.pop(job.id, None)
            holder = self.reported.get(job.id, "")
            entry = self.workers.get(holder)
            if entry is not None and entry.agent_name == job.agent_name and self.live(holder, now):
                return Decision("adopt", holder)
            return Decision("offer") if self.may_offer(now) else NOTHING
        if job.state != "running" or not self.may_judge(now):
            return NOTHING
        entry = self.workers.get(job.worker_id)
        if entry is None or not self.live(job.worker_id, now):
            self._absent.pop(job.id, None)
            return Decision("lost", job.worker_id)
        if job.id in entry.jobs:
            self._absent.pop(job.id, None)
            return NOTHING
        since = self._absent.setdefault(job.id, now)
        if now - since > self.worker_timeout_ms:
            del self._absent[job.id]
            return Decision("unreported", job.worker_id)
        return NOTHING

    def prune(self, open_jobs: set[str]) -> None:
        """Forget what is remembered of jobs no longer open."""
        for job_id in [j for j in self._absent if j not in open_jobs]:
            del self._absent[job_id]


__all__ = [
    "MAX_DISPATCHES_PER_ROOM",
    "OFFER_GRACE_MS",
    "Decision",
    "DispatchTable",
    "WorkerEntry",
]
