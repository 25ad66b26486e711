"""The statekeeper's shell with no nats-server: the twins of NATS, the room log and the store.

`Statekeeper` runs as in production (log reader, outbox, checkpoints, peer watcher), on
`MemoryNats`, `MemoryRoomLog` and `MemoryStore`, with a clock the test moves; the edge's
side is a `MemoryBus` on the same `MemoryNats`. What JetStream and SQL add is covered by
tests/test_statekeeper.py and the contract tests of each seam.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import AsyncIterator
from typing import TypeVar

import msgspec
import pytest
from nats.aio.msg import Msg

from roomlog.memory import MemoryRoomLog
from schemas import subjects
from schemas.api import EdgeHeartbeat
from schemas.client import JoinAccepted, ParticipantJoined
from schemas.codec import Message, decode, encode
from schemas.log import EdgeLost, JoinRequested, LogEvent
from schemas.models import Grant
from stagecast.bench.workload import VIEWER_GRANT
from statekeeper.outcomes import Outcome
from statekeeper.service import Statekeeper, Tuning
from statekeeper.store import MemoryStore
from tests.memory_bus import MemoryBus, MemoryNats
from tests.polling import eventually

ROOM = "town-hall"
EDGE = "ED_1"
EDGE_TIMEOUT_MS = 4_000
E = TypeVar("E", bound=LogEvent)


class Clock:
    """Wall-clock milliseconds that move only when the test says."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclasses.dataclass
class Shell:
    keeper: Statekeeper
    nats: MemoryNats
    log: MemoryRoomLog
    store: MemoryStore
    edge: MemoryBus
    clock: Clock

    def join(self, n: int, *, viewer: bool = False) -> JoinRequested:
        return JoinRequested(
            room_id=ROOM,
            at=self.clock(),
            sid=f"PA_{n}",
            participant_id=f"user-{n}",
            is_viewer=viewer,
            grant=VIEWER_GRANT if viewer else Grant(),
            edge_id=EDGE,
            req=n,
        )

    async def joined(self, n: int, *, viewer: bool = False) -> Message:
        """Join through the edge's bus, as a socket's join does; the statekeeper's answer."""
        event = self.join(n, viewer=viewer)
        reply, _data = await self.edge.append_and_wait(
            lambda inbox: msgspec.structs.replace(event, reply_to=inbox), f"join-{n}"
        )
        return reply

    def logged(self, kind: type[E]) -> list[E]:
        """The events of `kind` in the room log, in order."""
        decoded = (decode(data) for _subject, data, _at in self.log.entries())
        return [event for event in decoded if isinstance(event, kind)]

    def connected(self, sid: str) -> bool:
        return self.keeper.state.rooms[ROOM].sessions[sid].connected

    async def watcher_rounds(self, n: int) -> None:
        """Wait until the peer watcher went round `n` more times. Forwarders are never
        judged here (their timeout is out of reach), so each round skips one check."""
        start = self.keeper.liveness_skipped
        await eventually(
            lambda: self.keeper.liveness_skipped >= start + n, what=f"{n} watcher rounds"
        )


@pytest.fixture
async def shell() -> AsyncIterator[Shell]:
    clock = Clock(1_700_000_000_000)
    nats = MemoryNats(reconnect_buffer=True)  # the statekeeper's link buffers (main.py)
    log, store = MemoryRoomLog(clock=clock), MemoryStore()
    await log.ensure()
    tuning = Tuning(
        roster_flush_ms=10,
        count_tick_ms=10,
        edge_check_ms=10,
        edge_timeout_ms=EDGE_TIMEOUT_MS,
        forwarder_timeout_ms=10**15,
    )
    keeper = Statekeeper(nats, log, store, tuning=tuning, clock=clock)
    await keeper.start()
    await keeper.wait_caught_up()
    edge = await MemoryBus.connect(nats, log)
    try:
        yield Shell(keeper, nats, log, store, edge, clock)
    finally:
        await keeper.stop()
        await store.close()
        await nats.close()
    assert nats.callback_errors == []


async def test_joins_are_folded_answered_broadcast_and_written(shell: Shell) -> None:
    speakers: list[Message] = []

    async def on_speakers(msg: Msg) -> None:
        speakers.append(decode(msg.data))

    await shell.nats.subscribe(subjects.room_speakers(ROOM), cb=on_speakers)
    first = await shell.joined(1)
    assert isinstance(first, JoinAccepted) and first.participant.sid == "PA_1"
    assert isinstance(await shell.joined(2), JoinAccepted)
    assert isinstance(await shell.joined(3, viewer=True), JoinAccepted)

    await shell.nats.handled()
    assert [(type(m), m.participant.sid) for m in speakers] == [  # type: ignore[attr-defined]
        (ParticipantJoined, "PA_1"),
        (ParticipantJoined, "PA_2"),
    ]
    assert set(shell.keeper.state.rooms[ROOM].sessions) == {"PA_1", "PA_2", "PA_3"}

    seq = await shell.keeper.flush()
    assert seq == shell.keeper.applied_seq == 3
    assert await shell.store.count(ROOM, tier="speaker", snapshot_seq=seq) == 2
    assert await shell.store.count(ROOM, tier="viewer", snapshot_seq=seq) == 1
    names = [subject.rsplit(".", 1)[1] for subject, _message in shell.log.events]
    assert names.count("room_started") == 1 and names.count("participant_joined") == 3


async def test_a_silent_edge_is_lost_once_and_its_sessions_enter_the_grace(
    shell: Shell,
) -> None:
    assert isinstance(await shell.joined(1), JoinAccepted)
    beat = EdgeHeartbeat(edge_id=EDGE, at=shell.clock())
    await shell.nats.publish(subjects.EDGE_HEARTBEAT, encode(beat))
    await shell.nats.handled()
    shell.clock.now += EDGE_TIMEOUT_MS - 1
    await shell.watcher_rounds(3)
    assert shell.logged(EdgeLost) == [] and shell.connected("PA_1")

    shell.clock.now += 1
    await eventually(lambda: not shell.connected("PA_1"), what="PA_1 to enter its grace")
    lost = shell.logged(EdgeLost)
    assert lost == [EdgeLost(room_id=ROOM, at=shell.clock(), edge_id=EDGE)]
    shell.clock.now += EDGE_TIMEOUT_MS
    await shell.watcher_rounds(3)
    assert shell.logged(EdgeLost) == lost, "an edge is lost once"


async def test_silence_is_not_judged_while_the_statekeeper_is_cut_off(shell: Shell) -> None:
    assert isinstance(await shell.joined(1), JoinAccepted)
    await shell.nats.publish(subjects.EDGE_HEARTBEAT, encode(EdgeHeartbeat(edge_id=EDGE, at=1)))
    await shell.nats.handled()
    shell.nats.cut()
    shell.clock.now += 10 * EDGE_TIMEOUT_MS
    await shell.watcher_rounds(3)
    assert shell.logged(EdgeLost) == [] and shell.connected("PA_1")

    await shell.nats.restore()  # back, but the edge had no time to beat since
    await shell.watcher_rounds(3)
    assert shell.logged(EdgeLost) == [] and shell.connected("PA_1")

    shell.clock.now += EDGE_TIMEOUT_MS  # a whole timeout of the link up, and no beat
    await eventually(lambda: not shell.connected("PA_1"), what="PA_1 to enter its grace")
    assert [event.edge_id for event in shell.logged(EdgeLost)] == [EDGE]


async def test_every_outcome_class_has_a_handler(shell: Shell) -> None:
    """The shell looks handlers up by exact type: a new outcome class needs one too."""
    assert set(shell.keeper._handlers) == set(typing.get_args(Outcome))


def folded(keeper: Statekeeper, seq: int) -> bool:
    return keeper.applied_seq >= seq


async def test_replies_folded_close_together_go_out_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a busy log the outbox is written at most once per `outbox_gap_ms`: the first
    reply goes at once, the ones folded within the gap wait and go out together (at the
    latest when the log falls quiet), each exactly once and in order."""
    clock = Clock(1_700_000_000_000)
    nats = MemoryNats(reconnect_buffer=True)
    log, store = MemoryRoomLog(clock=clock), MemoryStore()
    await log.ensure()
    quiet = 10**9  # no count ticks, flushes or checks write the outbox meanwhile
    tuning = Tuning(
        outbox_gap_ms=60_000,
        roster_flush_ms=quiet,
        count_tick_ms=quiet,
        edge_check_ms=quiet,
        forwarder_timeout_ms=10**15,
    )
    keeper = Statekeeper(nats, log, store, tuning=tuning, clock=clock)
    writes: list[list[str]] = []
    send = keeper._send_outbox

    async def counted() -> None:
        if keeper._outbox:
            writes.append([subject for subject, _data in keeper._outbox])
        await send()

    monkeypatch.setattr(keeper, "_send_outbox", counted)
    replies: list[str] = []

    async def on_reply(msg: Msg) -> None:
        replies.append(msg.subject)

    await nats.subscribe("reply.*", cb=on_reply)
    await keeper.start()
    await keeper.wait_caught_up()
    shell = Shell(keeper, nats, log, store, await MemoryBus.connect(nats, log), clock)
    try:
        for n in range(1, 5):  # each folded in a batch of its own
            await log.append(msgspec.structs.replace(shell.join(n), reply_to=f"reply.{n}"), f"{n}")
            await eventually(functools.partial(folded, keeper, n), what=f"join {n} folded")
        await eventually(lambda: len(replies) == 4, what="every reply")
        assert replies == [f"reply.{n}" for n in range(1, 5)]
        answered = [[s for s in write if s.startswith("reply.")] for write in writes]
        assert answered == [["reply.1"], ["reply.2", "reply.3", "reply.4"]]
    finally:
        await keeper.stop()
        await store.close()
        await nats.close()
