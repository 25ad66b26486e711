"""The chaos benchmark's clients and its audit of the room log.

Every metadata write a `Member` makes carries a value unique in the whole run
(``<identity>#<n>``) and is filed under the fault phase it was sent in; `Audit` then reads
the `STAGECAST_LOG` stream from its first event and counts, for each phase, the
acknowledged values the log never stored (acked and lost) and the values stored more than
once (a retried append that doubled). Speakers also send data messages with unique ids;
every receiver counts an id it sees twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import random
from collections.abc import Iterable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.codec import SchemaError, decode
from schemas.log import ACTION_DEADLINE_MS, MetadataSet
from schemas.subjects import LOG_STREAM
from stagecast.client import Room
from stagecast.client.participant import RemoteParticipant
from stagecast.errors import StagecastError

AUDIT_LIMIT_S = 120.0
"""How long reading the log back may take."""


@dataclasses.dataclass(eq=False)
class Member:
    """One SDK client: its writes, by phase, and what it saw of the speakers."""

    identity: str
    room_id: str
    speaker: bool
    room: Room
    written: int = 0
    acked: dict[str, str] = dataclasses.field(default_factory=dict)
    """Value -> the phase it was sent in, for every acknowledged write."""
    refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """Writes answered with an error, by phase."""
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """Those errors, by phase and name (``<phase> <error>``)."""
    speaker_left: int = 0
    """`participant-left` events for a speaker seen by this client."""
    data_seen: set[str] = dataclasses.field(default_factory=set)
    data_doubled: int = 0
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.room.on("participant-left", self._on_left)
        self.room.on("data-received", self._on_data)

    def _on_left(self, participant: RemoteParticipant) -> None:
        self.speaker_left += 1

    def _on_data(self, message: Any) -> None:
        key = bytes(message.payload).decode(errors="replace")
        if key in self.data_seen:
            self.data_doubled += 1
        self.data_seen.add(key)

    async def write(self, phase: str, acks: list[float]) -> bool:
        """Set the metadata to a new unique value; True when it was acknowledged."""
        async with self.lock:
            self.written += 1
            value = f"{self.identity}#{self.written}"
            try:
                await self.room.local_participant.set_metadata(value)
            except StagecastError as exc:
                self.refused[phase] += 1
                self.errors[f"{phase} {type(exc).__name__}"] += 1
                return False
            self.acked[value] = phase
            acks.append(asyncio.get_running_loop().time())
            return True

    async def send_data(self) -> None:
        self.written += 1
        with contextlib.suppress(StagecastError):
            payload = f"{self.identity}@{self.written}".encode()
            await self.room.local_participant.publish_data(payload, reliable=True)


class Load:
    """Every member writes its metadata (speakers also send data) every `period` s."""

    def __init__(self, members: list[Member], period: float) -> None:
        self.members = members
        self.period = period
        self.phase = "join"
        self.acks: list[float] = []
        """When each acknowledged write was answered (loop time)."""
        self.ack_rooms: list[tuple[float, str]] = []
        self.in_flight = 0
        self._running = asyncio.Event()
        self._tasks = [asyncio.create_task(self._loop(m)) for m in members]

    def resume(self, phase: str) -> None:
        self.phase = phase
        self._running.set()

    async def pause(self, drain_s: float) -> None:
        """Stop new writes and wait (at most `drain_s`) for the ones in flight."""
        self._running.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.1)

    async def write(self, member: Member) -> bool:
        self.in_flight += 1
        try:
            acked = await member.write(self.phase, self.acks)
        finally:
            self.in_flight -= 1
        if acked:
            self.ack_rooms.append((self.acks[-1], member.room_id))
        return acked

    async def _loop(self, member: Member) -> None:
        await asyncio.sleep(random.uniform(0, self.period))
        while True:
            await self._running.wait()
            await self.write(member)
            if member.speaker:
                await member.send_data()
            await asyncio.sleep(self.period * random.uniform(0.9, 1.1))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def longest_gap(times: Iterable[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without one of `times` in it."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))


@dataclasses.dataclass
class AuditResult:
    """Per phase: acknowledged writes missing from the log, and writes stored twice."""

    lost: collections.Counter[str]
    duplicated: collections.Counter[str]
    stored: int


async def audit(nc: NATS, members: list[Member]) -> AuditResult:
    """Read every `MetadataSet` of the log back and compare with the acknowledged writes.

    A copy stored more than `ACTION_DEADLINE_MS` after its `at` was refused by the
    statekeeper, not applied (a write sent again after `UNAVAILABLE` may leave one beside
    the copy that was): only the copies applied count as lost (none) or duplicated (two).
    """
    js = nc.jetstream(timeout=10)
    last = (await js.stream_info(LOG_STREAM)).state.last_seq
    stored: collections.Counter[str] = collections.Counter()
    done = asyncio.Event()
    if last == 0:
        done.set()

    async def on_msg(msg: Msg) -> None:
        with contextlib.suppress(SchemaError):
            event = decode(msg.data)
            if isinstance(event, MetadataSet) and applies(event, msg):
                stored[event.metadata] += 1
        if msg.metadata.sequence.stream >= last:
            done.set()

    sub = await js.subscribe(">", stream=LOG_STREAM, ordered_consumer=True, cb=on_msg)
    try:
        await asyncio.wait_for(done.wait(), AUDIT_LIMIT_S)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    lost: collections.Counter[str] = collections.Counter()
    duplicated: collections.Counter[str] = collections.Counter()
    for member in members:
        for value, phase in member.acked.items():
            if stored[value] == 0:
                lost[phase] += 1
            elif stored[value] > 1:
                duplicated[phase] += 1
    return AuditResult(lost, duplicated, sum(stored.values()))


def applies(event: MetadataSet, msg: Msg) -> bool:
    """Whether the statekeeper applies this stored copy (it refuses one stored late)."""
    stored_at = msg.metadata.timestamp.timestamp() * 1000
    return stored_at - event.at <= ACTION_DEADLINE_MS


@contextlib.asynccontextmanager
async def fresh_database(base_url: str, prefix: str = "stagecast_chaos") -> Any:
    """A new, empty database on the PostgreSQL server of `base_url`, dropped afterwards."""
    url = make_url(base_url)
    name = f"{prefix}_{random.getrandbits(48):012x}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
