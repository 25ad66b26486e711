"""The statekeeper's persistence under poison and outages, against real processes.

A poison item (data a store or the events stream refuses: a NUL that PostgreSQL text cannot
hold, a subject no room token makes) is set aside with its error while every other room
keeps persisting; an outage (the events stream gone) keeps everything, retries with
backoff and logs one line when it starts and one when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import jwt
import msgpack
import nats
import pytest
from nats.aio.client import Client as NATS

from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from schemas import subjects
from schemas.api import HealthReply, HealthRequest
from schemas.codec import decode, encode, to_wire
from schemas.events import ParticipantJoinedEvent
from schemas.log import JoinRequested
from schemas.models import ParticipantInfo
from stagecast import errors
from statekeeper.batches import BatchWriter
from statekeeper.main import StatekeeperConfig, running_statekeeper
from statekeeper.outcomes import PublicEvent, RosterJoin
from statekeeper.persistence import (
    Deletion,
    PersistenceHealth,
    Snapshot,
    is_refusal,
    isolate,
)
from statekeeper.service import Statekeeper, Tuning
from statekeeper.store import SqlStore
from tests.polling import eventually
from tests.stack_fixtures import API_SECRET, sdk_stack
from tests.test_store import fresh_postgres_database

PG_URL = os.environ.get("STAGECAST_TEST_POSTGRES_URL")
FAST = Tuning(roster_flush_ms=20, snapshot_every_ms=200, count_tick_ms=10)
PERSISTENCE_LOG = "stagecast.statekeeper.persistence"


def join(room_id: str, n: int, participant_id: str | None = None) -> JoinRequested:
    return JoinRequested(
        room_id=room_id,
        at=1_000 + n,
        sid=f"PA_{n}",
        participant_id=participant_id or f"speaker-{n}",
        edge_id="ED_t",
    )


def _payload(token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return claims


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    if not PG_URL:
        pytest.skip("set STAGECAST_TEST_POSTGRES_URL to run on PostgreSQL")
    async with fresh_postgres_database(PG_URL) as url:
        yield url


@pytest.fixture
async def room_log(nc: NATS) -> RoomLog:
    log = RoomLog(nc.jetstream(), ack_timeout=1.0)
    await log.ensure()
    return log


# --------------------------------------------------------------------------- end to end


@pytest.mark.postgres
async def test_join_with_nul_in_room_id_is_refused_and_another_room_persists_on_postgres(
    tmp_path: Path, postgres_url: str
) -> None:
    # The fault: one roomless audience token and room_id="x\x00y" stopped all persistence.
    async with sdk_stack(tmp_path, database_url=postgres_url) as stack:
        with pytest.raises(errors.BadRequest, match="U\\+0000"):
            await stack.join(stack.token("mallory", None, viewer=True), room_id="x\x00y")
        with pytest.raises(ValueError, match="U\\+0009"):
            stack.token("mallory", "tab\troom", viewer=True)  # not minted at all
        claims = _payload(stack.token("mallory", "tabroom", viewer=True))
        forged = jwt.encode({**claims, "roomId": "tab\troom"}, API_SECRET, algorithm="HS256")
        with pytest.raises(errors.InvalidToken, match="U\\+0009"):
            await stack.join(forged)  # signed elsewhere: refused at the door
        await stack.join(stack.token("alice", "lobby"))
        await stack.join(stack.token(None, None, viewer=True), room_id="lobby")
        store = await SqlStore.open(postgres_url)
        try:
            await eventually(
                lambda: _roster_count(store, "lobby", 2), what="both lobby rows in PostgreSQL"
            )
            await eventually(lambda: _checkpointed(store, "lobby"), what="a lobby snapshot")
            assert await store.poisoned() == []
        finally:
            await store.close()


@pytest.mark.postgres
async def test_a_nul_event_already_in_the_log_is_skipped_and_persistence_continues_on_postgres(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A log written before the decode check (by an older edge) may hold the poison: it must
    # not stall a statekeeper that restarts on it, in any room.
    caplog.set_level(logging.WARNING, logger="stagecast")
    async with NatsServer(tmp_path / "nats") as server:
        nc = await nats.connect(server.url)
        try:
            room_log = RoomLog(nc.jetstream())
            await room_log.ensure()
            await room_log.append(join("lobby", 1), "j1")
            poison = to_wire(join("lobby", 2)) | {"room_id": "x\x00y", "participant_id": "a\x00"}
            await nc.jetstream().publish(
                subjects.room_log("poison"), msgpack.packb(poison, use_bin_type=True)
            )
            await room_log.append(join("lobby", 3), "j3")
            config = StatekeeperConfig(server.url, postgres_url, "s3cret", tuning=FAST)
            async with running_statekeeper(config) as keeper:
                await keeper.wait_caught_up()
                await room_log.append(join("stage", 4), "j4")
                store = keeper.store
                assert isinstance(store, SqlStore)
                await eventually(lambda: _roster_count(store, "lobby", 2), what="lobby rows")
                await eventually(lambda: _roster_count(store, "stage", 1), what="stage rows")
                await eventually(lambda: _checkpointed(store, "stage"), what="a stage snapshot")
                assert keeper.persistence.persistence_state == 0
                assert keeper.persistence.persist_failures_total == 0
        finally:
            await nc.close()
    skipped = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(skipped) == 1 and "ForbiddenCharacter" in skipped[0], skipped


async def _roster_count(store: SqlStore, room_id: str, expected: int) -> bool:
    return len(await roster_ids(store, room_id)) == expected


async def _checkpointed(store: SqlStore, room_id: str) -> bool:
    checkpoint, snapshots = await store.load()
    return checkpoint > 0 and room_id in snapshots


async def roster_ids(store: SqlStore, room_id: str) -> list[str]:
    page = await store.page(room_id, tier=None, limit=100, snapshot_seq=2**62, after=None)
    return [info.id for _key, info in page]


# --------------------------------------------------------------------------- pure parts


async def test_isolate_bisects_down_to_the_refused_items_and_keeps_order() -> None:
    written: list[int] = []

    async def write(chunk: Sequence[int]) -> None:
        bad = [i for i in chunk if i % 7 == 3]
        if bad:
            raise ValueError(f"refused {bad}")
        written.extend(chunk)

    refused = await isolate(list(range(20)), write)
    assert [item for item, _error in refused] == [3, 10, 17]
    assert all(isinstance(error, ValueError) for _item, error in refused)
    assert written == [i for i in range(20) if i % 7 != 3]  # every other item, in order


async def test_isolate_raises_an_outage_instead_of_setting_anything_aside() -> None:
    async def write(chunk: Sequence[int]) -> None:
        raise ConnectionRefusedError("database down")

    with pytest.raises(ConnectionRefusedError):
        await isolate([1, 2, 3], write)
    assert not is_refusal(TimeoutError()) and not is_refusal(TypeError("a bug, not data"))


def test_retry_backoff_doubles_from_100_ms_to_5_s_and_resets_when_back() -> None:
    health = PersistenceHealth()
    delays = [health.failed(TimeoutError(), 0.0) for _ in range(9)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert health.persistence_state == 1
    health.succeeded(12.0)
    assert health.persistence_state == 0
    assert health.failed(TimeoutError(), 13.0) == 0.1


# --------------------------------------------------------------------------- poison


@pytest.mark.postgres
async def test_postgres_refusing_a_nul_is_a_refusal_and_a_dead_server_an_outage(
    postgres_url: str, tmp_path: Path
) -> None:
    store = await SqlStore.open(postgres_url)
    try:
        nul = RosterJoin(room_id="x\x00y", participant=ParticipantInfo(sid="PA_1", id="a"), seq=1)
        with pytest.raises(Exception) as refused:
            await store.commit(roster=[nul], now_ms=1)
        assert is_refusal(refused.value), repr(refused.value)
        big = RosterJoin(room_id="r", participant=ParticipantInfo(sid="PA_1", id="a"), seq=2**63)
        with pytest.raises(Exception) as out_of_range:
            await store.commit(roster=[big], now_ms=1)
        assert is_refusal(out_of_range.value), repr(out_of_range.value)
    finally:
        await store.close()
    with pytest.raises(Exception) as down:
        await SqlStore.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    assert not is_refusal(down.value), repr(down.value)
    sqlite = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(Exception) as sqlite_refused:
            await sqlite.commit(roster=[big], now_ms=1)
        assert is_refusal(sqlite_refused.value), repr(sqlite_refused.value)
    finally:
        await sqlite.close()


@pytest.mark.postgres
async def test_nul_room_id_batch_is_set_aside_and_the_other_room_persists_on_postgres(
    postgres_url: str, room_log: RoomLog, nc: NATS
) -> None:
    # What the wire now refuses at decode, written anyway (a log from before the check):
    # the events stream refuses its subject, PostgreSQL its text; the other room persists.
    store = await SqlStore.open(postgres_url)
    try:
        health = PersistenceHealth()
        writer = BatchWriter(room_log, store, health, lambda: 5_000)
        events = await nc.jetstream().subscribe(
            f"{subjects.EVENTS_SUBJECTS}", ordered_consumer=True
        )
        good, bad = ParticipantInfo(sid="PA_1", id="alice"), ParticipantInfo(sid="PA_2", id="bob")
        await writer.write(
            [
                PublicEvent("x\x00y", "participant_joined", _joined_event("ev-bad", bad)),
                PublicEvent("lobby", "participant_joined", _joined_event("ev-good", good)),
                RosterJoin(room_id="x\x00y", participant=bad, seq=3),
                RosterJoin(room_id="lobby", participant=good, seq=4),
                Snapshot("x\x00y", 3, b"bad-room-state"),
                Snapshot("lobby", 4, b"lobby-state"),
                Deletion("gone\x00room", 2),
            ],
            seq=4,
            with_checkpoint=True,
        )
        checkpoint, snapshots = await store.load()
        assert checkpoint == 4
        assert snapshots == {"lobby": (4, b"lobby-state")}
        assert await roster_ids(store, "lobby") == ["alice"]
        message = await events.next_msg(timeout=5)
        assert decode(message.data) == _joined_event("ev-good", good)
        recorded = await store.poisoned()
        assert [(r.room, r.kind, r.seq) for r in recorded] == [
            ("x\\x00y", "public_event:participant_joined", 4),
            ("x\\x00y", "roster_join", 4),
            ("x\\x00y", "snapshot", 4),
            ("gone\\x00room", "room_deleted", 4),
        ]
        assert "U+0000" in recorded[0].error or "control character" in recorded[0].error
        assert "0x00" in recorded[1].error  # PostgreSQL's own words
        assert recorded[2].detail == b"bad-room-state"
        assert list(health.recent) == recorded
        assert health.poisoned_events_total == 4
        assert health.poisoned_rooms_total == 2
    finally:
        await store.close()


def _joined_event(event_id: str, participant: ParticipantInfo) -> ParticipantJoinedEvent:
    return ParticipantJoinedEvent(
        id=event_id, at=1, room_id="r", room_sid="RM_1", participant=participant
    )


@pytest.mark.postgres
async def test_nul_identity_is_set_aside_and_every_other_room_keeps_persisting_on_postgres(
    postgres_url: str,
    room_log: RoomLog,
    nc: NATS,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = await SqlStore.open(postgres_url)
    keeper = Statekeeper(nc, room_log, store, tuning=FAST)
    try:
        # Folded straight in, as a log written before the decode check would hand it over.
        caplog.set_level(logging.INFO, logger=PERSISTENCE_LOG)
        keeper.fold(1, join("room-a", 1))
        keeper.fold(2, join("room-p", 2))
        keeper.fold(3, join("room-p", 3, participant_id="x\x00y"))
        keeper.fold(4, join("room-b", 4))
        keeper.applied_seq = 4
        assert await keeper.checkpoint() == 4
        checkpoint, snapshots = await store.load()
        assert checkpoint == 4
        assert sorted(snapshots) == ["room-a", "room-b", "room-p"]
        assert await roster_ids(store, "room-a") == ["speaker-1"]
        assert await roster_ids(store, "room-b") == ["speaker-4"]
        assert await roster_ids(store, "room-p") == ["speaker-2"]  # only the poison is out
        recorded = await store.poisoned()
        assert [(r.room, r.kind) for r in recorded] == [("room-p", "roster_join")]
        assert recorded[0].error.startswith("CharacterNotInRepertoireError: invalid byte")
        assert keeper.persistence.poisoned_events_total == 1
        assert list(keeper.persistence.recent) == recorded
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "room-p" in errors[0].getMessage()
        # The pipeline is not stalled: the next batches go through, nothing is retried.
        keeper.fold(5, join("room-a", 5))
        keeper.fold(6, join("room-p", 6))
        keeper.applied_seq = 6
        assert await keeper.checkpoint() == 6
        assert (await store.load())[0] == 6
        assert await roster_ids(store, "room-a") == ["speaker-1", "speaker-5"]
        assert await roster_ids(store, "room-p") == ["speaker-2", "speaker-6"]
        assert len(await store.poisoned()) == 1
        assert keeper.persistence.persistence_state == 0
    finally:
        await keeper.stop()
        await store.close()


# --------------------------------------------------------------------------- outages


async def test_events_stream_outage_logs_one_warning_then_one_info_and_loses_nothing(
    nats_server: NatsServer,
    nc: NATS,
    room_log: RoomLog,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stagecast")
    config = StatekeeperConfig(
        nats_server.url, f"sqlite+aiosqlite:///{tmp_path / 'sk.db'}", "s3cret", tuning=FAST
    )
    async with running_statekeeper(config) as keeper:
        await keeper.wait_caught_up()
        js = nc.jetstream()
        await js.delete_stream(subjects.EVENTS_STREAM)  # public events have nowhere to go
        await room_log.append(join("lobby", 1), "j1")
        await eventually(
            lambda: keeper.persistence.persist_failures_total >= 4, what="4 failed attempts"
        )
        health = decode(await _health(nc))
        assert isinstance(health, HealthReply)
        assert health.persistence_state == 1 and health.persist_failures >= 4
        await asyncio.sleep(1.5)
        # Backoff, not a retry every 20 ms: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s covers ~3 s.
        assert keeper.persistence.persist_failures_total <= 8
        await room_log.ensure()  # the stream is back
        await eventually(lambda: keeper.persistence.persistence_state == 0, what="recovery")
        store = keeper.store
        assert isinstance(store, SqlStore)
        await eventually(
            lambda: _roster_has(store, "lobby", "speaker-1"), what="the join's roster row"
        )
    lines = [r for r in caplog.records if "persisting" in r.getMessage()]
    assert [(r.levelname, r.name) for r in lines] == [
        ("WARNING", PERSISTENCE_LOG),
        ("INFO", PERSISTENCE_LOG),
    ], [r.getMessage() for r in lines]
    assert "NoStreamResponseError" in lines[0].getMessage()
    assert "failed attempts" in lines[1].getMessage()


async def _health(nc: NATS) -> bytes:
    reply = await nc.request(subjects.STATEKEEPER_API, encode(HealthRequest()), timeout=5)
    return reply.data


async def _roster_has(store: SqlStore, room_id: str, participant_id: str) -> bool:
    return participant_id in await roster_ids(store, room_id)
