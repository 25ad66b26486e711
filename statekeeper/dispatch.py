"""Agent dispatch decisions, without IO: which worker takes a job, which workers are gone.

`DispatchTable` keeps the registered workers (from their heartbeats) and the jobs. Times
come in as arguments (ms), so every decision is a plain function of what it was told. The
shell (`statekeeper.agents`) offers jobs over NATS and reports back what happened.
"""

from __future__ import annotations

import dataclasses

import msgspec

from schemas.agents import AgentDispatch, AgentWorkerBeat

MAX_DISPATCHES_PER_ROOM = 64
"""The most jobs one room may have (ended ones included); beyond: `TooManyDispatches`."""
ENDED_KEPT = 1000
"""How many ended jobs are remembered (for `list_dispatches`), oldest forgotten first."""


class TooManyDispatches(Exception):
    """A room asked for more than `MAX_DISPATCHES_PER_ROOM` agent jobs."""

    def __init__(self, room_id: str, limit: int) -> None:
        super().__init__(f"room {room_id!r} has {limit} agent jobs already")
        self.room_id = room_id
        self.limit = limit


@dataclasses.dataclass(slots=True)
class WorkerEntry:
    worker_id: str
    agent_name: str
    capacity: int
    last_beat: int
    jobs: set[str] = dataclasses.field(default_factory=set)
    """Jobs the table gave it (what it reports and what was offered since)."""


class DispatchTable:
    """Workers by id and jobs by id; a job is pending, running on a worker, or ended."""

    def __init__(self, worker_timeout_ms: int) -> None:
        self.worker_timeout_ms = worker_timeout_ms
        self.workers: dict[str, WorkerEntry] = {}
        self.jobs: dict[str, AgentDispatch] = {}
        self._ended: list[str] = []

    # ------------------------------------------------------------------ workers

    def beat(self, beat: AgentWorkerBeat, now: int) -> None:
        """A worker is alive; the jobs it reports are its own (and running)."""
        entry = self.workers.get(beat.worker_id)
        if entry is None:
            entry = self.workers[beat.worker_id] = WorkerEntry(
                beat.worker_id, beat.agent_name, beat.capacity, now
            )
        entry.last_beat = now
        entry.capacity = beat.capacity
        for job_id in beat.jobs:
            job = self.jobs.get(job_id)
            if job is not None and job.state != "ended" and job.worker_id == beat.worker_id:
                entry.jobs.add(job_id)

    def lost_workers(self, now: int) -> list[AgentDispatch]:
        """Forget workers silent past the timeout. Their running jobs become pending again;
        returns those jobs as they were (on the lost worker)."""
        lost = {w for w, e in self.workers.items() if now - e.last_beat > self.worker_timeout_ms}
        for worker_id in lost:
            del self.workers[worker_id]
        orphans = [
            job for job in self.jobs.values() if job.state == "running" and job.worker_id in lost
        ]
        for job in orphans:
            self.jobs[job.id] = msgspec.structs.replace(job, state="pending", worker_id="")
        return orphans

    def reserve(self, job_id: str, worker_id: str) -> None:
        """Count the job against the worker while it is being offered."""
        entry = self.workers.get(worker_id)
        if entry is not None:
            entry.jobs.add(job_id)

    def release(self, job_id: str, worker_id: str) -> None:
        """The worker did not take the offered job."""
        entry = self.workers.get(worker_id)
        if entry is not None:
            entry.jobs.discard(job_id)

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

    # ------------------------------------------------------------------ jobs

    def add(self, job: AgentDispatch) -> None:
        """A new pending job (`TooManyDispatches` past the room's limit)."""
        in_room = sum(1 for j in self.jobs.values() if j.room_id == job.room_id)
        if in_room >= MAX_DISPATCHES_PER_ROOM:
            raise TooManyDispatches(job.room_id, MAX_DISPATCHES_PER_ROOM)
        self.jobs[job.id] = job

    def started(self, job_id: str, worker_id: str) -> AgentDispatch | None:
        """`worker_id` accepted the job: it runs there (None if it ended meanwhile)."""
        job = self.jobs.get(job_id)
        if job is None or job.state == "ended":
            return None
        job = self.jobs[job_id] = msgspec.structs.replace(
            job, state="running", worker_id=worker_id, attempt=job.attempt + 1
        )
        entry = self.workers.get(worker_id)
        if entry is not None:
            entry.jobs.add(job_id)
        return job

    def ended(self, job_id: str, worker_id: str) -> AgentDispatch | None:
        """The worker running the job says it is over (None: not that worker's, or over)."""
        job = self.jobs.get(job_id)
        if job is None or job.state == "ended" or job.worker_id != worker_id:
            return None
        job = self.jobs[job_id] = msgspec.structs.replace(job, state="ended")
        entry = self.workers.get(worker_id)
        if entry is not None:
            entry.jobs.discard(job_id)
        self._ended.append(job_id)
        while len(self._ended) > ENDED_KEPT:
            self.jobs.pop(self._ended.pop(0), None)
        return job

    def pending(self) -> list[AgentDispatch]:
        return [j for j in self.jobs.values() if j.state == "pending"]

    def in_room(self, room_id: str) -> list[AgentDispatch]:
        return sorted(
            (j for j in self.jobs.values() if j.room_id == room_id),
            key=lambda j: (j.created_at, j.id),
        )
