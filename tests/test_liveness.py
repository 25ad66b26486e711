"""Edge liveness, synchronously: the own-link rule for judging silence, and `EdgeLost`
for each room of an edge that stopped beating. No IO: a clock and a link flag stand in."""

from __future__ import annotations

from schemas.log import EdgeLost, LogEvent
from statekeeper.liveness import Liveness
from tests.test_fold import ROOM, Log

TIMEOUT_MS = 4_000


class Peers:
    """A `Liveness` over a fold log, with a settable clock and own-link state."""

    def __init__(self) -> None:
        self.log = Log()
        self.now = 0
        self.up = True
        self.appended: list[tuple[str, LogEvent]] = []
        self.liveness = Liveness(
            clock=lambda: self.now,
            link_up=lambda: self.up,
            edge_timeout_ms=TIMEOUT_MS,
            rooms=lambda: self.log.state.rooms,
            append=lambda key, event: self.appended.append((key, event)),
        )


def test_silence_is_not_judged_while_the_own_link_is_down_or_new() -> None:
    peers = Peers()
    peers.up = False
    peers.liveness.start()
    peers.now = 10 * TIMEOUT_MS
    assert not peers.liveness.may_judge(TIMEOUT_MS)  # down: every peer would look lost
    peers.up = True
    assert not peers.liveness.may_judge(TIMEOUT_MS)  # just came up: peers had no time
    peers.now += TIMEOUT_MS - 1
    assert not peers.liveness.may_judge(TIMEOUT_MS)
    peers.now += 1
    assert peers.liveness.may_judge(TIMEOUT_MS)
    assert peers.liveness.skipped == 3
    peers.up = False
    assert not peers.liveness.may_judge(TIMEOUT_MS)  # a drop starts the wait over
    peers.up = True
    peers.now += TIMEOUT_MS - 1
    assert not peers.liveness.may_judge(TIMEOUT_MS)


def test_a_silent_edge_is_lost_once_in_each_of_its_rooms_and_a_beating_one_is_not() -> None:
    peers = Peers()
    peers.log.join("a", edge_id="E1")
    peers.log.join("b", edge_id="E2")
    peers.liveness.start()  # both edges seen at 0, from the state
    peers.now = TIMEOUT_MS - 1
    peers.liveness.check_edges()
    assert peers.appended == []
    peers.now = TIMEOUT_MS
    peers.liveness.check_edges()
    lost = [event for _key, event in peers.appended]
    assert lost == [
        EdgeLost(room_id=ROOM, at=TIMEOUT_MS, edge_id="E1"),
        EdgeLost(room_id=ROOM, at=TIMEOUT_MS, edge_id="E2"),
    ]
    peers.now += TIMEOUT_MS
    peers.liveness.check_edges()  # already lost: not appended again
    assert len(peers.appended) == 2
    assert len({key for key, _event in peers.appended}) == 2  # one dedup key per decision
