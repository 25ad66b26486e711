"""Media placement and desired state, synchronously: the fold's `MediaChanged` outcomes, the
planner's `MediaSession` messages, and the forwarder table. No IO."""

from __future__ import annotations

from schemas.client import MediaMoved
from schemas.codec import decode
from schemas.log import (
    ForwarderAssigned,
    LeaveRequested,
    SubscriptionRequested,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.media import ForwarderHeartbeat, MediaSession
from schemas.models import TrackInfo
from statekeeper.media import ForwarderTable, MediaPlanner
from statekeeper.outcomes import MediaChanged, Outcome
from statekeeper.snapshots import pack_room, unpack_room
from tests.test_fold import ROOM, Log


class Plan:
    """A fold log plus a planner that records what it would send to each forwarder."""

    def __init__(self) -> None:
        self.log = Log()
        self.sent: list[tuple[str, MediaSession]] = []
        self.told: list[tuple[str, MediaMoved]] = []
        """Frames to sessions' direct subjects."""
        self.planner = MediaPlanner(self._publish)

    def _publish(self, subject: str, data: bytes) -> None:
        message = decode(data)
        if isinstance(message, MediaMoved):
            self.told.append((subject, message))
            return
        assert isinstance(message, MediaSession)
        self.sent.append((subject.split(".")[2], message))

    def apply(self, out: list[Outcome]) -> list[MediaChanged]:
        changes = [o for o in out if isinstance(o, MediaChanged)]
        for change in changes:
            self.planner.changed(change)
        return changes

    def flush(self) -> list[tuple[str, MediaSession]]:
        self.sent.clear()
        self.planner.flush(self.log.state, self.log.seq)
        return list(self.sent)

    def assign(self, identity: str, forwarder: str) -> list[MediaChanged]:
        sid = self.log.sid(identity)
        return self.apply(
            self.log(ForwarderAssigned(room_id=ROOM, at=1, sid=sid, forwarder_id=forwarder))
        )

    def publish(self, identity: str, track_sid: str, kind: str = "video") -> None:
        track = TrackInfo(sid=track_sid, kind=kind)  # type: ignore[arg-type]
        event = TrackPublishRequested(room_id=ROOM, at=1, sid=self.log.sid(identity), track=track)
        self.apply(self.log(event))

    def subscribe(self, identity: str, publisher: str, kind: str = "video") -> list[MediaChanged]:
        event = SubscriptionRequested(
            room_id=ROOM,
            at=1,
            sid=self.log.sid(identity),
            participant_id=publisher,
            kind=kind,  # type: ignore[arg-type]
            subscribed=True,
        )
        return self.apply(self.log(event))


def test_a_session_without_a_forwarder_causes_no_media_traffic() -> None:
    plan = Plan()
    plan.log.join("alice")
    plan.publish("alice", "TR_cam")
    assert plan.flush() == []


def test_a_first_subscription_asks_for_placement() -> None:
    plan = Plan()
    plan.log.join("alice")
    plan.log.join("bob")
    plan.publish("alice", "TR_cam")
    (change,) = plan.subscribe("bob", "alice")
    assert change.forwarder == "" and change.sid == plan.log.sid("bob")
    assert plan.flush() == []  # the shell places it; the planner ignores unplaced sessions


def test_placement_sends_the_session_and_its_subscribers_their_state() -> None:
    plan = Plan()
    plan.log.join("alice")
    plan.log.join("bob")
    plan.publish("alice", "TR_cam")
    plan.publish("alice", "TR_mic", "audio")
    plan.subscribe("bob", "alice")
    plan.assign("bob", "FW_b")
    (only_bob,) = plan.flush()
    assert only_bob[0] == "FW_b" and only_bob[1].subscriptions == ()  # alice is not placed
    plan.assign("alice", "FW_a")
    sent = dict(plan.flush())
    assert [t.track_sid for t in sent["FW_a"].tracks] == ["TR_cam", "TR_mic"]
    (wanted,) = sent["FW_b"].subscriptions  # bob wants video only
    assert (wanted.track_sid, wanted.forwarder_id, wanted.publisher_id) == (
        "TR_cam",
        "FW_a",
        "alice",
    )
    assert sent["FW_b"].subject == f"stagecast.sess.E1.{plan.log.sid('bob')}"


def test_mute_unpublish_and_leave_reach_the_forwarders() -> None:
    plan = Plan()
    plan.log.join("alice")
    plan.log.join("bob")
    plan.publish("alice", "TR_cam")
    plan.subscribe("bob", "alice")
    plan.assign("alice", "FW_a")
    plan.assign("bob", "FW_a")
    plan.flush()
    alice = plan.log.sid("alice")
    plan.apply(
        plan.log(TrackMuteRequested(room_id=ROOM, at=1, sid=alice, track_sid="TR_cam", muted=True))
    )
    (muted,) = plan.flush()  # only alice's own state: muting needs no subscriber changes
    assert muted[1].sid == alice and muted[1].tracks[0].muted
    plan.apply(plan.log(TrackUnpublishRequested(room_id=ROOM, at=1, sid=alice, track_sid="TR_cam")))
    after = {m.identity: m for _f, m in plan.flush()}
    assert after["alice"].tracks == () and after["bob"].subscriptions == ()
    plan.apply(plan.log(LeaveRequested(room_id=ROOM, at=1, sid=alice)))
    ((forwarder, gone),) = plan.flush()
    assert forwarder == "FW_a" and gone.closed and gone.sid == alice


def test_moving_a_session_closes_it_on_the_old_forwarder_and_tells_its_client() -> None:
    plan = Plan()
    plan.log.join("alice")
    plan.publish("alice", "TR_cam")
    plan.assign("alice", "FW_a")
    plan.flush()
    assert plan.told == []  # placed for the first time: its client is offering already
    plan.assign("alice", "FW_b")
    sent = plan.flush()
    assert [(f, m.closed) for f, m in sent] == [("FW_a", True), ("FW_b", False)]
    assert all(m.seq == plan.log.seq for _f, m in sent)  # newer than anything FW_a applied
    assert plan.told == [(f"stagecast.sess.E1.{plan.log.sid('alice')}", MediaMoved())]
    plan.assign("alice", "FW_b")  # the same forwarder again: nothing moved
    plan.flush()
    assert len(plan.told) == 1


def test_a_session_that_moved_and_left_in_one_batch_is_not_told() -> None:
    plan = Plan()
    plan.log.join("alice")
    plan.assign("alice", "FW_a")
    plan.flush()
    plan.assign("alice", "FW_b")
    plan.apply(plan.log(LeaveRequested(room_id=ROOM, at=1, sid=plan.log.sid("alice"))))
    plan.flush()
    assert plan.told == []


def test_the_placement_is_in_the_snapshot() -> None:
    plan = Plan()
    plan.log.join("alice")
    plan.assign("alice", "FW_a")
    room = plan.log.state.rooms[ROOM]
    again = unpack_room(pack_room(room))
    assert again.sessions[plan.log.sid("alice")].forwarder == "FW_a"
    plan.flush()
    plan.sent.clear()
    assert plan.planner.sync_all(plan.log.state, plan.log.seq) == 1
    assert [f for f, _m in plan.sent] == ["FW_a"]


def test_a_forged_forwarder_id_is_ignored() -> None:
    plan = Plan()
    plan.log.join("alice")
    assert plan.assign("alice", "not a subject token") == []
    assert plan.log.state.rooms[ROOM].sessions[plan.log.sid("alice")].forwarder == ""


def test_the_table_picks_the_least_loaded_live_forwarder() -> None:
    table = ForwarderTable(timeout_ms=3_000)
    assert table.least_loaded(0) is None
    table.beat(ForwarderHeartbeat(forwarder_id="FW_a", at=0, peer_connections=4), 0)
    table.beat(ForwarderHeartbeat(forwarder_id="FW_b", at=0, peer_connections=1), 0)
    assert table.least_loaded(10) == "FW_b"
    table.assigned("FW_b")
    table.assigned("FW_b")  # two placements since its beat: now heavier than FW_a
    assert table.least_loaded(10) == "FW_a"
    assert table.least_loaded(3_000) is None  # both silent for the timeout
    assert table.expire(3_000) == ["FW_a", "FW_b"]
    table.beat(ForwarderHeartbeat(forwarder_id="FW_c", at=0), 4_000)
    table.beat(ForwarderHeartbeat(forwarder_id="FW_c", at=0, stopping=True), 4_100)
    assert table.live(4_100) == []
