"""The statekeeper driven through a real nats-server: the log in, outcomes and reads out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from schemas import subjects
from schemas.api import HealthReply, HealthRequest, ListParticipantsRequest
from schemas.client import (
    AudienceChanged,
    CountsChanged,
    Error,
    JoinAccepted,
    ParticipantJoined,
    ParticipantsPage,
)
from schemas.clock import now_ms
from schemas.codec import decode, encode
from schemas.log import (
    JoinRequested,
    LeaveRequested,
    LogEvent,
    ParticipantRemoveRequested,
    RoomDeleteRequested,
)
from stagecast.bench.workload import VIEWER_GRANT, storm
from statekeeper.fold import apply
from statekeeper.main import StatekeeperConfig, running_statekeeper
from statekeeper.outcomes import PublicEvent
from statekeeper.service import Tuning
from statekeeper.snapshots import digest, restore
from statekeeper.state import State
from statekeeper.store import SqlStore
from tests.polling import eventually

ROOM = "webinar-2026-05"
FAST = Tuning(roster_flush_ms=20, snapshot_every_ms=200, count_tick_ms=10)


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.drain()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'statekeeper.db'}"


def viewer_join(i: int, reply_to: str | None = None) -> JoinRequested:
    return JoinRequested(
        room_id=ROOM,
        at=now_ms() + i,  # an action stored late would be refused (ACTION_DEADLINE_MS)
        sid=f"PA_v{i}",
        participant_id=f"viewer-{i}",
        is_viewer=True,
        grant=VIEWER_GRANT,
        edge_id="ED_t",
        reply_to=reply_to,
        req=i,
    )


def speaker_join(i: int, reply_to: str | None = None) -> JoinRequested:
    return JoinRequested(
        room_id=ROOM,
        at=now_ms() + i,
        sid=f"PA_s{i}",
        participant_id=f"speaker-{i}",
        edge_id="ED_t",
        reply_to=reply_to,
        req=i,
    )


class Inbox:
    """Collects decoded messages on a subject."""

    def __init__(self) -> None:
        self.messages: list[object] = []

    async def on_msg(self, msg: object) -> None:
        self.messages.append(decode(msg.data))  # type: ignore[attr-defined]

    def of(self, cls: type) -> list[object]:
        return [m for m in self.messages if isinstance(m, cls)]


async def test_joins_are_answered_and_only_speakers_broadcast(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    config = StatekeeperConfig(nats_server.url, sqlite_url(tmp_path), "s3cret", tuning=FAST)
    async with running_statekeeper(config):
        room_log = RoomLog(nc.jetstream())
        replies, speakers, counts, mod = Inbox(), Inbox(), Inbox(), Inbox()
        await nc.subscribe("reply.>", cb=replies.on_msg)
        await nc.subscribe(subjects.room_speakers(ROOM), cb=speakers.on_msg)
        await nc.subscribe(subjects.room_counts(ROOM), cb=counts.on_msg)
        await nc.subscribe(subjects.room_mod(ROOM), cb=mod.on_msg)
        await nc.flush()
        for i in range(2):
            await room_log.append(speaker_join(i, f"reply.s{i}"), f"s{i}")
        for i in range(30):
            await room_log.append(viewer_join(i, f"reply.v{i}"), f"v{i}")
        accepted: list[object] = await eventually(
            lambda: replies.of(JoinAccepted) if len(replies.of(JoinAccepted)) == 32 else [],
            what="32 join replies",
        )
        last = accepted[-1]
        assert isinstance(last, JoinAccepted)
        assert [p.id for p in last.speakers] == ["speaker-0", "speaker-1"]
        await eventually(
            lambda: bool(counts.messages) and _total_of(counts.messages[-1]) == 32,
            what="final counts",
        )
        joined = speakers.of(ParticipantJoined)
        assert [m.participant.id for m in joined] == ["speaker-0", "speaker-1"]  # type: ignore[attr-defined]
        # Counts are coalesced: far fewer updates than joins.
        assert len(counts.of(CountsChanged)) < 32
        # Moderators are told the audience changed, coalesced alike.

        def final_audience() -> list[AudienceChanged]:
            found = [m for m in mod.messages if isinstance(m, AudienceChanged)]
            return [m for m in found if m.counts.total == 32]

        assert await eventually(final_audience, what="audience_changed with the final counts")
        assert len(mod.of(AudienceChanged)) < 32


async def test_pagination_walk_survives_churn(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    config = StatekeeperConfig(nats_server.url, sqlite_url(tmp_path), "s3cret", tuning=FAST)
    async with running_statekeeper(config):
        room_log = RoomLog(nc.jetstream())
        await room_log.append_many(
            [(speaker_join(i), f"s{i}") for i in range(3)]
            + [(viewer_join(i), f"v{i}") for i in range(240)]
        )

        async def ask(cursor: str | None, limit: int = 50) -> ParticipantsPage:
            request = ListParticipantsRequest(room_id=ROOM, limit=limit, cursor=cursor)
            reply = decode((await nc.request(subjects.STATEKEEPER_API, encode(request), 5)).data)
            assert isinstance(reply, ParticipantsPage), reply
            return reply

        await eventually(lambda: ask(None, 1), what="the room exists")
        await eventually(lambda: _total(ask(None, 1), 243), what="all joins folded")
        first = await ask(None)
        assert first.total == 243
        seen = [p.id for p in first.participants]
        assert seen[:3] == ["speaker-0", "speaker-1", "speaker-2"]
        cursor = first.next_cursor
        churn = 0
        while cursor is not None:
            # Between pages: some of the not-yet-walked viewers leave, new ones join.
            leaves = [
                (
                    LeaveRequested(room_id=ROOM, at=9_000, sid=f"PA_v{239 - churn - k}"),
                    f"l{churn}{k}",
                )
                for k in range(5)
            ]
            joins = [(viewer_join(1000 + churn * 10 + k), f"n{churn}{k}") for k in range(5)]
            await room_log.append_many([*leaves, *joins])
            churn += 5
            page = await ask(cursor)
            assert page.total == 243
            seen += [p.id for p in page.participants]
            cursor = page.next_cursor
        expected = [f"speaker-{i}" for i in range(3)] + [f"viewer-{i}" for i in range(240)]
        assert seen == expected  # exactly the snapshot: no gap, no duplicate, no newcomer


async def _total(page_coro: object, want: int) -> bool:
    page = await page_coro  # type: ignore[misc]
    return bool(page.total == want)


# --------------------------------------------------------------------------- kill -9


def _spawn_statekeeper(nats_url: str, database_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, STAGECAST_API_KEY="k", STAGECAST_API_SECRET="s3cret")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stagecast.cli",
                "statekeeper",
                "--nats-url",
                nats_url,
                "--database-url",
                database_url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


async def _health(nc: NATS) -> HealthReply | None:
    with contextlib.suppress(Exception):
        reply = decode(
            (await nc.request(subjects.STATEKEEPER_API, encode(HealthRequest()), 1)).data
        )
        if isinstance(reply, HealthReply):
            return reply
    return None


@pytest.mark.slow
async def test_kill_9_mid_log_then_restart_equals_an_uninterrupted_fold(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    # Without reply_to: whether an action is applied also depends on when it was stored
    # (the action deadline), which a straight fold of the same events cannot know.
    workload = storm(ROOM, viewers=18_500, speakers=5, churn=0.1, replies=False)
    events: list[LogEvent] = list(workload)[:20_000]
    assert len(events) == 20_000
    room_log = RoomLog(nc.jetstream())
    await room_log.ensure()
    database_url = sqlite_url(tmp_path)
    proc = _spawn_statekeeper(nats_server.url, database_url, tmp_path / "sk.log")
    try:
        half = len(events) // 2
        await room_log.append_many([(e, f"e{i}") for i, e in enumerate(events[:half])])
        # Let it fold part of the log and write at least one snapshot, then kill it hard.
        await eventually(
            lambda: _applied_at_least(nc, half // 2), timeout=60, what="statekeeper folding"
        )
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await room_log.append_many([(e, f"e{i}") for i, e in enumerate(events[half:], half)])
        proc = _spawn_statekeeper(nats_server.url, database_url, tmp_path / "sk.log")
        await eventually(lambda: _applied_at_least(nc, len(events)), timeout=90, what="recovery")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    # The straight fold of the same log, with the same sequences.
    expected = State()
    public_ids: list[str] = []
    for seq, event in enumerate(events, start=1):
        for outcome in apply(expected, seq, event):
            if isinstance(outcome, PublicEvent):
                public_ids.append(outcome.message.id)  # type: ignore[attr-defined]

    store = await SqlStore.open(database_url)
    try:
        checkpoint, snapshots = await store.load()
        recovered = restore(snapshots, (0,))
        assert checkpoint == len(events)
        assert digest(recovered) == digest(expected)
        rows = await store.page(
            ROOM, tier=None, limit=100_000, snapshot_seq=len(events), after=None
        )
        ids = [info.sid for _key, info in rows]
        assert len(ids) == len(set(ids)) == len(expected.rooms[ROOM].sessions)
    finally:
        await store.close()

    # Each public event is in the durable stream exactly once, under its id (the replay
    # after the kill published some again, in fast batches: the ids deduplicated them).
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    assert info.state.messages == len(public_ids) == len(set(public_ids))
    stored_ids = []
    for seq in range(1, info.state.messages + 1):
        msg = await js.get_msg(subjects.EVENTS_STREAM, seq)
        event_id = decode(msg.data or b"").id  # type: ignore[attr-defined]
        assert (msg.headers or {}).get("Nats-Msg-Id") == event_id
        stored_ids.append(event_id)
    assert stored_ids == public_ids  # in log order


async def _applied_at_least(nc: NATS, seq: int) -> bool:
    health = await _health(nc)
    return health is not None and health.ok and health.applied_seq >= seq


def _token_join(i: int, room_id: str) -> JoinRequested:
    """A join with token id ``J-bob`` (a roomless token: a new participant id each time)."""
    join = speaker_join(i, f"reply.bob{i}")
    return msgspec.structs.replace(
        join, room_id=room_id, participant_id=f"p-bob{i}", token_id="J-bob", token_expires_at=2**40
    )


async def test_revoked_token_stays_refused_across_kill_9_replay_and_a_clean_restart(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    room_log = RoomLog(nc.jetstream())
    await room_log.ensure()
    replies = Inbox()
    await nc.subscribe("reply.>", cb=replies.on_msg)
    database_url = sqlite_url(tmp_path)
    proc = _spawn_statekeeper(nats_server.url, database_url, tmp_path / "sk.log")
    try:
        await room_log.append(_token_join(1, ROOM), "j1")
        remove = ParticipantRemoveRequested(room_id=ROOM, at=3_000, participant_id="p-bob1")
        await room_log.append(remove, "rm")
        await room_log.append(RoomDeleteRequested(room_id=ROOM, at=3_001), "del")
        await eventually(lambda: _applied_at_least(nc, 3), timeout=30, what="the removal")
        proc.send_signal(signal.SIGKILL)  # before its first snapshot: the restart replays
        proc.wait(10)
        await room_log.append(_token_join(2, ROOM), "j2")  # the room is gone: it would reopen
        proc = _spawn_statekeeper(nats_server.url, database_url, tmp_path / "sk.log")
        await eventually(lambda: _applied_at_least(nc, 4), timeout=30, what="recovery")
        proc.send_signal(signal.SIGTERM)  # a clean stop: the last snapshot holds it
        proc.wait(30)
        await room_log.append(_token_join(3, "another-room"), "j3")
        proc = _spawn_statekeeper(nats_server.url, database_url, tmp_path / "sk.log")
        await eventually(lambda: _applied_at_least(nc, 5), timeout=30, what="second recovery")
        await eventually(lambda: len(_by_request(replies)) == 3, what="three join replies")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    answers = _by_request(replies)  # a replay may answer a request again: harmless
    assert isinstance(answers[1], JoinAccepted)
    for req in (2, 3):
        refused = answers[req]
        assert isinstance(refused, Error) and refused.code == "INVALID_TOKEN", refused
    store = await SqlStore.open(database_url)
    try:
        _checkpoint, snapshots = await store.load()
        state = restore(snapshots, (0,))
        assert state.revoked == {"J-bob": 2**40} and state.rooms == {}
    finally:
        await store.close()


def _by_request(inbox: Inbox) -> dict[int | None, object]:
    return {m.id: m for m in inbox.messages if isinstance(m, (JoinAccepted, Error))}


def _total_of(message: object) -> int:
    assert isinstance(message, CountsChanged), message
    return message.counts.total
