"""The fold, synchronously: every decision of the statekeeper, with no IO."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas.log
from schemas.api import OkReply, ParticipantReply, RoomReply
from schemas.client import (
    Ack,
    Disconnect,
    Error,
    HandChanged,
    JoinAccepted,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    TierChanged,
    TrackPublished,
    ViewerUpdated,
)
from schemas.log import (
    ACTION_DEADLINE_MS,
    AttributesSet,
    EdgeLost,
    GraceExpired,
    JoinRequested,
    LeaveRequested,
    LogEvent,
    MetadataSet,
    ParticipantRemoveRequested,
    ParticipantUpdateRequested,
    ResumeRequested,
    RoomCreateRequested,
    RoomDeleteRequested,
    RoomTimedOut,
    SessionDisconnected,
    SubscriptionRequested,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.models import Grant, TrackInfo
from statekeeper.fold import HANDLERS, REVOKED_KEPT_MS, apply
from statekeeper.fold.dispatch import handles
from statekeeper.outcomes import (
    Broadcast,
    CountsMoved,
    Direct,
    Outcome,
    PublicEvent,
    RevocationsChanged,
    RoomEnded,
    RosterJoin,
    RosterLeave,
    TimerDue,
)
from statekeeper.snapshots import (
    digest,
    pack_revocations,
    pack_room,
    restore,
    revocations_key,
    unpack_room,
)
from statekeeper.state import Room, State, _build_info

ROOM = "town-hall"


class Log:
    """Feeds events to the fold with increasing sequences and keeps the outcomes."""

    def __init__(self) -> None:
        self.state = State()
        self.seq = 0
        self.at = 1_000_000

    def __call__(self, event: LogEvent) -> list[Outcome]:
        self.seq += 1
        return apply(self.state, self.seq, event)

    def join(self, identity: str, *, viewer: bool = False, **kw: Any) -> list[Outcome]:
        self.at += 10
        fields: dict[str, Any] = {
            "room_id": ROOM,
            "at": self.at,
            "sid": f"PA_{identity}_{self.seq + 1}",
            "participant_id": identity,
            "is_viewer": viewer,
            "edge_id": "E1",
            "reply_to": f"reply.{identity}",
            "req": 1,
        }
        fields.update(kw)
        return self(JoinRequested(**fields))

    def sid(self, identity: str) -> str:
        return self.state.rooms[ROOM].by_identity[identity]


def broadcasts(out: list[Outcome], channel: str = "speakers") -> list[Any]:
    return [o.message for o in out if isinstance(o, Broadcast) and o.channel == channel]


def directs(out: list[Outcome], subject: str | None = None) -> list[Any]:
    return [o.message for o in out if isinstance(o, Direct) and subject in (None, o.subject)]


def test_first_join_creates_the_room_and_accepts() -> None:
    log = Log()
    out = log.join("alice")
    (accepted,) = directs(out, "reply.alice")
    assert isinstance(accepted, JoinAccepted)
    assert accepted.participant.id == "alice" and accepted.room.id == ROOM
    assert accepted.counts.speaker == 1 and accepted.counts.total == 1
    names = [o.name for o in out if isinstance(o, PublicEvent)]
    assert names == ["room_started", "participant_joined"]
    assert any(isinstance(o, RosterJoin) for o in out)


def test_speakers_see_each_other_and_viewers_cause_no_broadcast() -> None:
    log = Log()
    log.join("alice")
    out = log.join("bob")
    (joined,) = broadcasts(out)
    assert isinstance(joined, ParticipantJoined) and joined.participant.id == "bob"
    (accepted,) = directs(out, "reply.bob")
    assert [p.id for p in accepted.speakers] == ["alice"]

    out = log.join("v1", viewer=True)
    assert broadcasts(out) == [] and broadcasts(out, "mod") == []
    assert any(isinstance(o, CountsMoved) for o in out)
    (accepted,) = directs(out, "reply.v1")
    assert [p.id for p in accepted.speakers] == ["alice", "bob"]
    assert accepted.counts.viewer == 1 and accepted.counts.total == 3


def test_duplicate_identity_replaces_the_old_session() -> None:
    log = Log()
    log.join("alice")
    old_sid = log.sid("alice")
    out = log.join("alice")
    kicked = directs(out, f"stagecast.sess.E1.{old_sid}")
    assert kicked == [Disconnect(reason="DUPLICATE_IDENTITY")]
    left = [m for m in broadcasts(out) if isinstance(m, ParticipantLeft)]
    assert [m.sid for m in left] == [old_sid]
    room = log.state.rooms[ROOM]
    assert len(room.sessions) == 1 and room.speakers == 1
    assert log.sid("alice") != old_sid


def test_room_full_counts_everyone_but_agents() -> None:
    log = Log()
    log(RoomCreateRequested(room_id=ROOM, at=1, room_sid="RM_x", max_participants=2))
    log.join("a")
    log.join("v", viewer=True)
    out = log.join("c")
    assert directs(out, "reply.c")[0].code == "ROOM_FULL"
    out = log.join("bot", kind="agent")
    assert isinstance(directs(out, "reply.bot")[0], JoinAccepted)


def test_explicit_room_times_out_when_nobody_joins() -> None:
    log = Log()
    out = log(
        RoomCreateRequested(room_id=ROOM, at=5_000, room_sid="RM_x", empty_timeout=30, reply_to="a")
    )
    assert isinstance(directs(out)[0], RoomReply)
    (timer,) = [o.event for o in out if isinstance(o, TimerDue)]
    assert isinstance(timer, RoomTimedOut) and timer.at == 35_000
    out = log(timer)
    assert ROOM not in log.state.rooms
    assert [o.name for o in out if isinstance(o, PublicEvent)] == ["room_finished"]
    assert any(isinstance(o, RoomEnded) for o in out)


def test_departure_timeout_is_cancelled_by_a_new_join() -> None:
    log = Log()
    log.join("a")
    out = log(LeaveRequested(room_id=ROOM, at=2_000_000, sid=log.sid("a")))
    (timer,) = [o.event for o in out if isinstance(o, TimerDue)]
    log.join("b")
    log(LeaveRequested(room_id=ROOM, at=2_000_500, sid=log.sid("b")))
    log(timer)  # the first timer is stale: the room emptied again later
    assert ROOM in log.state.rooms


def test_disconnect_grace_then_resume_keeps_the_session_silently() -> None:
    log = Log()
    log.join("a")
    log.join("b")
    sid = log.sid("b")
    out = log(SessionDisconnected(room_id=ROOM, at=3_000_000, sid=sid, edge_id="E1"))
    assert broadcasts(out) == []
    (timer,) = [o.event for o in out if isinstance(o, TimerDue)]
    out = log(
        ResumeRequested(room_id=ROOM, at=3_001_000, sid=sid, edge_id="E2", reply_to="r2", epoch=1)
    )
    (accepted,) = directs(out, "r2")
    assert isinstance(accepted, JoinAccepted) and accepted.resumed
    assert accepted.participant.sid == sid and broadcasts(out) == []
    assert log(timer) == []  # the grace no longer applies
    assert log.state.rooms[ROOM].sessions[sid].edge_id == "E2"


def test_grace_expiry_removes_the_session() -> None:
    log = Log()
    log.join("a")
    sid = log.sid("a")
    out = log(SessionDisconnected(room_id=ROOM, at=3_000_000, sid=sid, edge_id="E1"))
    (timer,) = [o.event for o in out if isinstance(o, TimerDue)]
    out = log(timer)
    assert sid not in log.state.rooms[ROOM].sessions
    assert any(isinstance(o, RosterLeave) for o in out)
    out = log(ResumeRequested(room_id=ROOM, at=3_100_000, sid=sid, edge_id="E1", reply_to="r"))
    assert directs(out, "r")[0].code == "RESUME_FAILED"


def test_disconnect_from_a_stale_edge_is_ignored() -> None:
    log = Log()
    log.join("a")
    sid = log.sid("a")
    log(ResumeRequested(room_id=ROOM, at=1, sid=sid, edge_id="E2", epoch=1))
    assert log(SessionDisconnected(room_id=ROOM, at=2, sid=sid, edge_id="E1")) == []
    assert log.state.rooms[ROOM].sessions[sid].connected


def test_edge_lost_starts_the_grace_of_its_sessions_only() -> None:
    log = Log()
    log.join("a", edge_id="E1")
    log.join("b", edge_id="E2")
    out = log(EdgeLost(room_id=ROOM, at=9, edge_id="E1"))
    room = log.state.rooms[ROOM]
    assert not room.sessions[log.sid("a")].connected
    assert room.sessions[log.sid("b")].connected
    assert len([o for o in out if isinstance(o, TimerDue)]) == 1


def test_metadata_and_attributes_merge_and_delete() -> None:
    log = Log()
    log.join("a")
    log.join("b")
    sid = log.sid("a")
    out = log(AttributesSet(room_id=ROOM, at=1, sid=sid, attributes={"x": "1", "y": "2"}))
    (update,) = broadcasts(out)
    assert isinstance(update, ParticipantUpdated)
    assert update.participant.attributes == {"x": "1", "y": "2"}
    log(AttributesSet(room_id=ROOM, at=2, sid=sid, attributes={"x": ""}))
    assert log.state.rooms[ROOM].sessions[sid].attributes == {"y": "2"}
    out = log(MetadataSet(room_id=ROOM, at=3, sid=sid, metadata="hello", reply_to="r", req=7))
    assert directs(out, "r") == [Ack(id=7)]


def test_hand_raise_reaches_moderators_for_both_tiers() -> None:
    log = Log()
    log.join("host")
    log.join("v", viewer=True)
    out = log(AttributesSet(room_id=ROOM, at=1, sid=log.sid("v"), attributes={"hand": "raised"}))
    assert broadcasts(out) == []
    mod = broadcasts(out, "mod")
    assert any(isinstance(m, HandChanged) and m.raised for m in mod)
    assert any(isinstance(m, ViewerUpdated) for m in mod)
    out = log(AttributesSet(room_id=ROOM, at=2, sid=log.sid("v"), attributes={"hand": ""}))
    assert [m.raised for m in broadcasts(out, "mod") if isinstance(m, HandChanged)] == [False]


def test_livestream_visibility_rules() -> None:
    log = Log()
    log(RoomCreateRequested(room_id=ROOM, at=1, room_sid="RM_x", livestream=True))
    log.join("host")
    out = log.join("quiet")
    assert broadcasts(out) == []
    (accepted,) = directs(out, "reply.quiet")
    assert accepted.speakers == ()  # the host is hidden too: no tracks, no data yet
    sid = log.sid("quiet")
    out = log(AttributesSet(room_id=ROOM, at=2, sid=sid, attributes={"hand": "raised"}))
    assert [type(m) for m in broadcasts(out)] == [ParticipantJoined]
    out = log(AttributesSet(room_id=ROOM, at=3, sid=sid, attributes={"hand": ""}))
    assert [type(m) for m in broadcasts(out)] == [ParticipantUpdated]  # stays visible
    track = TrackInfo(sid="TR_1", kind="video", source="camera")
    out = log(TrackPublishRequested(room_id=ROOM, at=4, sid=log.sid("host"), track=track))
    assert [type(m) for m in broadcasts(out)] == [ParticipantJoined]
    out = log.join("quiet")  # a new session is hidden again
    assert [type(m) for m in broadcasts(out)] == [ParticipantLeft]


def test_tracks_publish_mute_unpublish_and_subscriptions() -> None:
    log = Log()
    log.join("pub")
    log.join("sub")
    log.join("v", viewer=True)
    psid, ssid = log.sid("pub"), log.sid("sub")
    out = log(
        SubscriptionRequested(
            room_id=ROOM,
            at=1,
            sid=ssid,
            participant_id="pub",
            kind="video",
            subscribed=True,
            reply_to="r",
            req=1,
        )
    )
    assert directs(out, "r")[0].code == "NOT_PUBLISHED"
    out = log(
        SubscriptionRequested(
            room_id=ROOM,
            at=1,
            sid=ssid,
            participant_id="v",
            kind="video",
            subscribed=True,
            reply_to="r",
            req=2,
        )
    )
    assert directs(out, "r")[0].code == "INVALID_PERMISSIONS"
    track = TrackInfo(sid="TR_v", kind="video", source="camera")
    out = log(TrackPublishRequested(room_id=ROOM, at=2, sid=psid, track=track, reply_to="p", req=3))
    assert directs(out, "p") == [Ack(id=3, sid="TR_v")]
    assert [type(m) for m in broadcasts(out)] == [TrackPublished]
    out = log(
        SubscriptionRequested(
            room_id=ROOM,
            at=3,
            sid=ssid,
            participant_id="pub",
            kind="video",
            subscribed=True,
            reply_to="r",
            req=4,
        )
    )
    assert directs(out, "r") == [Ack(id=4)]
    out = log(TrackMuteRequested(room_id=ROOM, at=4, sid=psid, track_sid="TR_v", muted=True))
    assert log.state.rooms[ROOM].sessions[psid].tracks["TR_v"].muted
    out = log(
        TrackPublishRequested(room_id=ROOM, at=5, sid=log.sid("v"), track=track, reply_to="q")
    )
    assert directs(out, "q")[0].code == "INVALID_PERMISSIONS"
    out = log(TrackUnpublishRequested(room_id=ROOM, at=6, sid=psid, track_sid="TR_v"))
    assert [o.name for o in out if isinstance(o, PublicEvent)] == ["track_unpublished"]
    out = log(TrackUnpublishRequested(room_id=ROOM, at=7, sid=psid, track_sid="TR_v", reply_to="p"))
    assert directs(out, "p")[0].code == "TRACK_NOT_FOUND"


def test_promotion_and_demotion_move_tiers_live() -> None:
    log = Log()
    log.join("host")
    log.join("v", viewer=True, grant=Grant(can_publish=False))
    sid = log.sid("v")
    stage = Grant(can_publish=True)
    out = log(
        ParticipantUpdateRequested(
            room_id=ROOM, at=1, participant_id="v", is_viewer=False, grant=stage, reply_to="api"
        )
    )
    (joined,) = broadcasts(out)
    assert isinstance(joined, ParticipantJoined) and joined.participant.id == "v"
    (tier,) = directs(out, f"stagecast.sess.E1.{sid}")
    assert isinstance(tier, TierChanged) and not tier.participant.is_viewer and tier.grant == stage
    room = log.state.rooms[ROOM]
    assert (room.speakers, room.viewers) == (2, 0)
    assert isinstance(directs(out, "api")[0], ParticipantReply)
    roster = [o for o in out if isinstance(o, (RosterJoin, RosterLeave))]
    assert [type(o) for o in roster] == [RosterLeave, RosterJoin]

    log(TrackPublishRequested(room_id=ROOM, at=2, sid=sid, track=TrackInfo(sid="T", kind="audio")))
    out = log(ParticipantUpdateRequested(room_id=ROOM, at=3, participant_id="v", is_viewer=True))
    assert [type(m) for m in broadcasts(out)] == [ParticipantLeft]
    assert room.sessions[sid].tracks == {} and (room.speakers, room.viewers) == (1, 1)


def test_promotion_without_a_grant_gives_the_speaker_grant_and_lowers_the_hand() -> None:
    log = Log()
    log.join("v", viewer=True, grant=Grant(can_publish=False, can_publish_data=False))
    sid = log.sid("v")
    log(AttributesSet(room_id=ROOM, at=1, sid=sid, attributes={"hand": "raised", "x": "1"}))
    out = log(ParticipantUpdateRequested(room_id=ROOM, at=2, participant_id="v", is_viewer=False))
    (tier,) = directs(out, f"stagecast.sess.E1.{sid}")
    assert isinstance(tier, TierChanged)
    assert tier.grant.can_publish and tier.grant.can_publish_data and tier.grant.can_subscribe
    assert tier.participant.attributes == {"x": "1"}  # its own state loses the hand too
    (lowered,) = broadcasts(out, "mod")
    assert isinstance(lowered, HandChanged) and not lowered.raised
    track = TrackInfo(sid="T", kind="audio")
    out = log(TrackPublishRequested(room_id=ROOM, at=3, sid=sid, track=track, reply_to="p"))
    assert isinstance(directs(out, "p")[0], Ack)
    out = log(ParticipantUpdateRequested(room_id=ROOM, at=4, participant_id="v", is_viewer=True))
    (tier,) = directs(out, f"stagecast.sess.E1.{sid}")
    assert not tier.grant.can_publish and not tier.grant.can_publish_data
    track = TrackInfo(sid="U", kind="audio")
    out = log(TrackPublishRequested(room_id=ROOM, at=5, sid=sid, track=track, reply_to="q"))
    assert directs(out, "q")[0].code == "INVALID_PERMISSIONS"


def test_a_moderator_joining_late_is_told_of_hands_already_up() -> None:
    log = Log()
    log.join("v", viewer=True)
    log.join("w", viewer=True)
    log(AttributesSet(room_id=ROOM, at=1, sid=log.sid("v"), attributes={"hand": "raised"}))
    out = log.join("host", grant=Grant(can_moderate=True))
    accepted, hand = directs(out, "reply.host")
    assert isinstance(accepted, JoinAccepted)
    assert isinstance(hand, HandChanged) and hand.raised and hand.participant.id == "v"
    assert directs(log.join("plain"), "reply.plain")[1:] == []  # not a moderator: no hands
    room = log.state.rooms[ROOM]
    assert list(room.hands) == [log.sid("v")]  # an index: the join did not scan the room
    restored = unpack_room(pack_room(room))
    assert restored.hands.keys() == room.hands.keys()
    log(LeaveRequested(room_id=ROOM, at=5, sid=log.sid("v")))
    assert room.hands == {}
    out = log.join("host2", grant=Grant(can_moderate=True))
    assert [type(m) for m in directs(out, "reply.host2")] == [JoinAccepted]


def test_remove_revokes_the_token_and_delete_closes_everyone() -> None:
    log = Log()
    log.join("a", token_id="J1")
    sid = log.sid("a")
    out = log(ParticipantRemoveRequested(room_id=ROOM, at=1, participant_id="a", reply_to="api"))
    assert directs(out, f"stagecast.sess.E1.{sid}") == [Disconnect(reason="REMOVED")]
    assert directs(out, "api") == [OkReply()]
    out = log.join("a", token_id="J1")
    assert directs(out, "reply.a")[0].code == "INVALID_TOKEN"
    out = log(ParticipantRemoveRequested(room_id=ROOM, at=1, participant_id="zz", reply_to="api"))
    assert directs(out, "api")[0].code == "PARTICIPANT_NOT_FOUND"
    log.join("b")
    out = log(RoomDeleteRequested(room_id=ROOM, at=2, reply_to="api"))
    assert broadcasts(out) == [Disconnect(reason="ROOM_DELETED")]
    assert ROOM not in log.state.rooms
    out = log(RoomDeleteRequested(room_id=ROOM, at=3, reply_to="api"))
    assert isinstance(directs(out, "api")[0], Error)


def _remove(log: Log, identity: str, at: int) -> list[Outcome]:
    return log(ParticipantRemoveRequested(room_id=ROOM, at=at, participant_id=identity))


def test_removed_roomless_token_is_refused_under_a_new_participant_id() -> None:
    log = Log()
    log.join("p-first", token_id="J-roomless", token_expires_at=9_000_000)
    _remove(log, "p-first", 2_000_000)
    # The edge gives a token without a participant id a new id on each join.
    out = log.join("p-second", token_id="J-roomless", token_expires_at=9_000_000)
    (refused,) = directs(out, "reply.p-second")
    assert refused.code == "INVALID_TOKEN" and "removed" in refused.message
    assert "p-second" not in log.state.rooms[ROOM].by_identity
    assert isinstance(
        directs(log.join("other", token_id="J-other"), "reply.other")[0], JoinAccepted
    )


def test_revocation_outlives_the_room_until_the_token_expires() -> None:
    log = Log()
    log.join("a", token_id="J1", token_expires_at=5_000_000)
    out = _remove(log, "a", 2_000_000)
    assert any(isinstance(o, RevocationsChanged) for o in out)
    (timer,) = [o.event for o in out if isinstance(o, TimerDue)]
    log(timer)  # the emptied room times out and closes
    assert ROOM not in log.state.rooms
    out = log.join("a", token_id="J1", token_expires_at=5_000_000)
    assert directs(out, "reply.a")[0].code == "INVALID_TOKEN"
    assert ROOM not in log.state.rooms  # a refused join opens no room
    # The room comes back with another participant: the token is still refused there.
    log.join("b", token_id="J2", token_expires_at=9_000_000)
    out = log.join("a", token_id="J1", token_expires_at=5_000_000)
    assert directs(out, "reply.a")[0].code == "INVALID_TOKEN"
    # A later removal, long after J1 expired, prunes it (by the event's time).
    _remove(log, "b", 5_000_000 + REVOKED_KEPT_MS + 1)
    assert log.state.revoked == {"J2": 9_000_000}


def test_revocations_survive_a_snapshot_restore() -> None:
    log = Log()
    log.join("a", token_id="J1", token_expires_at=9_000_000)
    log.join("b", token_id="J2", token_expires_at=9_000_000)
    _remove(log, "a", 2_000_000)
    key = revocations_key((0,))
    snapshots = {r: (log.seq, pack_room(room)) for r, room in log.state.rooms.items()}
    snapshots[key] = (log.seq, pack_revocations(log.state.revoked))
    restored = restore(snapshots, (0,))
    assert restored.revoked == {"J1": 9_000_000} and set(restored.rooms) == {ROOM}
    assert digest(restored) == digest(log.state)
    assert len(key) > 256  # longer than any room id: never a room
    log.state = restored
    out = log.join("a", token_id="J1", token_expires_at=9_000_000)
    assert directs(out, "reply.a")[0].code == "INVALID_TOKEN"


def _dropped(log: Log, identity: str, at: int) -> str:
    sid = log.sid(identity)
    log(SessionDisconnected(room_id=ROOM, at=at, sid=sid, edge_id="E1"))
    return sid


def _resume(log: Log, sid: str, epoch: int, at: int, **kw: Any) -> Any:
    reply_to = f"r.{log.seq}"
    out = log(
        ResumeRequested(
            room_id=ROOM, at=at, sid=sid, edge_id="E2", reply_to=reply_to, epoch=epoch, **kw
        )
    )
    (reply,) = directs(out, reply_to)
    return reply, out


def test_a_resume_epoch_works_once_and_a_replay_does_not_take_over() -> None:
    log = Log()
    log.join("a")
    accepted = directs(log.join("b"), "reply.b")[0]
    assert accepted.epoch == 1
    sid = _dropped(log, "b", 3_000_000)
    first, _ = _resume(log, sid, 1, 3_000_100)
    assert isinstance(first, JoinAccepted) and first.resumed and first.epoch == 2
    # The same token again (epoch 1): refused, and the live session on E2 is untouched.
    again, out = _resume(log, sid, 1, 3_000_200)
    assert isinstance(again, Error) and again.code == "RESUME_FAILED"
    assert directs(out, f"stagecast.sess.E2.{sid}") == [] and broadcasts(out) == []
    session = log.state.rooms[ROOM].sessions[sid]
    assert session.connected and session.edge_id == "E2" and session.epoch == 2
    # The token of the newer resume works, once; then the one before it is stale too.
    newer, _ = _resume(log, sid, 2, 3_000_300)
    assert isinstance(newer, JoinAccepted) and newer.epoch == 3
    stale, _ = _resume(log, sid, 2, 3_000_400)
    assert isinstance(stale, Error) and stale.code == "RESUME_FAILED"


def test_a_resume_after_the_participant_token_expired_is_refused() -> None:
    log = Log()
    log.join("a", token_expires_at=3_500_000)
    sid = _dropped(log, "a", 3_000_000)
    refused, _ = _resume(log, sid, 1, 3_500_000)
    assert isinstance(refused, Error) and refused.code == "RESUME_FAILED"
    assert "expired" in refused.message
    assert not log.state.rooms[ROOM].sessions[sid].connected  # still in its grace


def test_a_resume_naming_another_room_sid_is_refused() -> None:
    log = Log()
    log.join("a")
    sid = _dropped(log, "a", 3_000_000)
    refused, _ = _resume(log, sid, 1, 3_000_100, room_sid="RM_other")
    assert isinstance(refused, Error) and refused.code == "RESUME_FAILED"
    room_sid = log.state.rooms[ROOM].sid
    accepted, _ = _resume(log, sid, 1, 3_000_200, room_sid=room_sid)
    assert isinstance(accepted, JoinAccepted)


def test_snapshot_round_trip_keeps_indexes() -> None:
    log = Log()
    log.join("a")
    log.join("v", viewer=True)
    log(AttributesSet(room_id=ROOM, at=1, sid=log.sid("a"), attributes={"k": "v"}))
    room = log.state.rooms[ROOM]
    again = unpack_room(pack_room(room))
    assert again == room


def test_every_log_event_type_has_one_handler_in_the_one_table() -> None:
    event_types = {
        cls
        for cls in vars(schemas.log).values()
        if isinstance(cls, type) and issubclass(cls, LogEvent) and cls is not LogEvent
    }
    assert event_types == set(HANDLERS)
    with pytest.raises(TypeError, match="JoinRequested has a handler already"):
        handles(JoinRequested)(lambda state, seq, event, out: None)


# --------------------------------------------------------------------------- replay


def assert_caches_fresh(room: Room) -> None:
    """Every cached wire view equals the view built now from the session as it is."""
    for session in room.sessions.values():
        assert session.info is None or session.info == _build_info(session), session.sid
    if room.speaker_views is not None:
        fresh = tuple(_build_info(s) for s in room.speaker_sids.values() if s.visible)
        assert room.speaker_views == fresh


def _random_log(draw: st.DrawFn) -> list[LogEvent]:
    identities = ["a", "b", "c", "d", "v1", "v2"]
    events: list[LogEvent] = []
    sids: list[str] = []
    at = 0
    for i in range(draw(st.integers(5, 60))):
        at += draw(st.integers(0, 30_000))
        choice = draw(st.integers(0, 13))
        who = draw(st.sampled_from(identities))
        sid = draw(st.sampled_from(sids)) if sids and choice > 2 else f"PA_{i}"
        if choice <= 2 or not sids:
            sids.append(sid)
            events.append(
                JoinRequested(
                    room_id=ROOM,
                    at=at,
                    sid=sid,
                    participant_id=who,
                    is_viewer=who.startswith("v"),
                    edge_id="E1",
                    token_id=f"J-{who}-{draw(st.integers(0, 1))}",
                    token_expires_at=draw(st.sampled_from([0, at + 60_000])),
                )
            )
        elif choice == 3:
            events.append(LeaveRequested(room_id=ROOM, at=at, sid=sid))
        elif choice == 4:
            events.append(SessionDisconnected(room_id=ROOM, at=at, sid=sid, edge_id="E1"))
        elif choice == 5:
            events.append(
                GraceExpired(
                    room_id=ROOM,
                    at=at,
                    sid=sid,
                    disconnected_at=draw(st.sampled_from([0, at - 20_000])),
                )
            )
        elif choice == 6:
            events.append(
                AttributesSet(
                    room_id=ROOM,
                    at=at,
                    sid=sid,
                    attributes={"hand": draw(st.sampled_from(["", "raised"]))},
                )
            )
        elif choice == 7:
            events.append(
                TrackPublishRequested(
                    room_id=ROOM, at=at, sid=sid, track=TrackInfo(sid=f"T{i}", kind="audio")
                )
            )
        elif choice == 8:
            events.append(
                ParticipantUpdateRequested(
                    room_id=ROOM, at=at, participant_id=who, is_viewer=draw(st.booleans())
                )
            )
        elif choice == 10:
            events.append(ParticipantRemoveRequested(room_id=ROOM, at=at, participant_id=who))
        elif choice == 11:
            events.append(MetadataSet(room_id=ROOM, at=at, sid=sid, metadata=f"m{i}"))
        elif choice == 12:
            events.append(
                SubscriptionRequested(
                    room_id=ROOM,
                    at=at,
                    sid=sid,
                    participant_id=who,
                    kind="audio",
                    subscribed=draw(st.booleans()),
                )
            )
        elif choice == 13:
            events.append(
                ParticipantUpdateRequested(room_id=ROOM, at=at, participant_id=who, name=f"n{i}")
            )
        else:
            epoch = draw(st.integers(0, 3))
            events.append(ResumeRequested(room_id=ROOM, at=at, sid=sid, edge_id="E2", epoch=epoch))
    return events


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_replay_is_deterministic_and_snapshots_resume_exactly(data: st.DataObject) -> None:
    events = data.draw(st.composite(_random_log)())
    cut = data.draw(st.integers(0, len(events)))

    first, second = State(), State()
    outs1 = []
    for i, e in enumerate(events):
        outs1.append(apply(first, i + 1, e))
        for room in first.rooms.values():
            assert_caches_fresh(room)
    outs2 = [apply(second, i + 1, e) for i, e in enumerate(events)]
    assert outs1 == outs2
    assert digest(first) == digest(second)

    # Snapshot after `cut` events, restore, replay the rest: same state as one straight fold.
    partial = State()
    for i, e in enumerate(events[:cut]):
        apply(partial, i + 1, e)
    snapshots = {k: (cut, pack_room(r)) for k, r in partial.rooms.items()}
    snapshots[revocations_key((0,))] = (cut, pack_revocations(partial.revoked))
    restored = restore(snapshots, (0,))
    outs3 = [apply(restored, i + 1, e) for i, e in enumerate(events[cut:], start=cut)]
    assert outs3 == outs1[cut:]  # the restored state decides exactly as the straight fold
    assert digest(restored) == digest(first)
    for room in first.rooms.values():
        assert room.speakers + room.viewers == len(room.sessions)
        assert set(room.by_identity.values()) == set(room.sessions)


def test_ids_that_cannot_form_a_subject_are_refused_at_the_door() -> None:
    log = Log()
    out = log.join("a", sid="PA.bad")
    assert directs(out, "reply.a")[0].code == "BAD_REQUEST"
    assert ROOM not in log.state.rooms
    log.join("b")
    sid = log.sid("b")
    out = log(ResumeRequested(room_id=ROOM, at=1, sid=sid, edge_id="E*", reply_to="r", epoch=1))
    assert directs(out, "r")[0].code == "RESUME_FAILED"
    assert log.state.rooms[ROOM].sessions[sid].edge_id == "E1"


# --------------------------------------------------------------------------- hardening


def test_an_action_stored_past_the_deadline_is_refused_and_changes_nothing() -> None:
    """A publish nats-py buffered through a reconnect must not land after its edge told the
    client it failed: the fold refuses actions stored `ACTION_DEADLINE_MS` after their `at`."""
    log = Log()
    log.join("alice")
    sid = log.sid("alice")
    late = MetadataSet(
        room_id=ROOM, at=log.at, sid=sid, metadata="stale", reply_to="reply.alice", req=9
    )
    log.seq += 1
    out = apply(log.state, log.seq, late, stored_at=log.at + ACTION_DEADLINE_MS + 1)
    (error,) = directs(out, "reply.alice")
    assert isinstance(error, Error) and error.code == "UNAVAILABLE" and error.id == 9
    assert log.state.rooms[ROOM].sessions[sid].metadata == ""
    assert broadcasts(out) == []
    on_time = msgspec.structs.replace(late, metadata="fresh", req=10)
    log.seq += 1
    out = apply(log.state, log.seq, on_time, stored_at=log.at + ACTION_DEADLINE_MS)
    assert isinstance(directs(out, "reply.alice")[0], Ack)
    assert log.state.rooms[ROOM].sessions[sid].metadata == "fresh"


def test_a_stale_join_never_displaces_the_newer_session_of_its_identity() -> None:
    log = Log()
    log.join("alice")
    newer = log.sid("alice")
    out = log.join("alice", at=log.at - 5, reply_to="reply.stale")
    (error,) = directs(out, "reply.stale")
    assert isinstance(error, Error) and error.code == "DUPLICATE_IDENTITY"
    assert log.sid("alice") == newer
    assert not [d for d in directs(out) if isinstance(d, Disconnect)]


def test_a_retried_join_with_the_same_sid_continues_the_session_unseen() -> None:
    """A join that timed out at the edge is not withdrawn: its retry (same join key, so the
    same sid) takes the session over from its grace, and nobody sees it leave or join."""
    log = Log()
    log.join("observer")
    first = log.join("late", sid="PA_keyed", reply_to="reply.first")
    assert [type(m) for m in broadcasts(first)] == [ParticipantJoined]
    log(SessionDisconnected(room_id=ROOM, at=log.at + 1, sid="PA_keyed", edge_id="E1"))
    out = log.join("late", sid="PA_keyed", edge_id="E2", reply_to="reply.retry")
    (accepted,) = directs(out, "reply.retry")
    assert isinstance(accepted, JoinAccepted) and not accepted.resumed
    assert broadcasts(out) == []
    assert not [o for o in out if isinstance(o, PublicEvent)]
    session = log.state.rooms[ROOM].sessions["PA_keyed"]
    assert session.connected and session.edge_id == "E2"
    other = log.join("mallory", sid="PA_keyed", reply_to="reply.mallory")
    (refused,) = directs(other, "reply.mallory")
    assert isinstance(refused, Error) and refused.code == "BAD_REQUEST"


def test_a_session_removed_at_the_end_of_its_grace_is_told_so() -> None:
    """Its socket may still be open (an edge cut off from NATS): it gets SESSION_LOST."""
    log = Log()
    log.join("alice")
    sid = log.sid("alice")
    log(EdgeLost(room_id=ROOM, at=log.at + 1, edge_id="E1"))
    session = log.state.rooms[ROOM].sessions[sid]
    out = log(
        GraceExpired(
            room_id=ROOM, at=log.at + 30_000, sid=sid, disconnected_at=session.disconnected_at
        )
    )
    (lost,) = [d for d in directs(out) if isinstance(d, Disconnect)]
    assert lost.reason == "SESSION_LOST" and lost.can_reconnect
    room = log.state.rooms.get(ROOM)
    assert room is None or sid not in room.sessions
