"""The fold's caches: every change that alters what they hold makes the next answer fresh.

The join reply's speaker list is cached per room (`visible_speakers`) and each session's
wire view per session (`participant_info`); a stale cache would show a new viewer an old
name, a departed speaker, or miss a promoted one. Each test changes one thing and reads
the next viewer's join reply, then checks the caches against views built from scratch.
"""

from __future__ import annotations

from schemas.client import JoinAccepted
from schemas.log import (
    AttributesSet,
    LeaveRequested,
    MetadataSet,
    ParticipantUpdateRequested,
    RoomCreateRequested,
    SubscriptionRequested,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.models import Grant, ParticipantInfo, TrackInfo
from tests.test_fold import ROOM, Log, assert_caches_fresh, directs


def next_viewer_sees(log: Log, name: str) -> tuple[ParticipantInfo, ...]:
    """The speakers in the join reply of a new viewer `name` (the caches checked first)."""
    out = log.join(name, viewer=True)
    (accepted,) = directs(out, f"reply.{name}")
    assert isinstance(accepted, JoinAccepted)
    assert_caches_fresh(log.state.rooms[ROOM])
    return accepted.speakers


def started(*speakers: str) -> Log:
    log = Log()
    for name in speakers:
        log.join(name)
    next_viewer_sees(log, "warm")  # the speaker list is cached from here on
    assert log.state.rooms[ROOM].speaker_views is not None
    return log


def test_a_speakers_metadata_and_attributes_show_in_the_next_join_reply() -> None:
    log = started("alice", "bob")
    log(MetadataSet(room_id=ROOM, at=1, sid=log.sid("alice"), metadata="slide 2"))
    assert [s.metadata for s in next_viewer_sees(log, "v1")] == ["slide 2", ""]
    log(AttributesSet(room_id=ROOM, at=2, sid=log.sid("bob"), attributes={"topic": "q&a"}))
    assert [s.attributes for s in next_viewer_sees(log, "v2")] == [{}, {"topic": "q&a"}]
    log(AttributesSet(room_id=ROOM, at=3, sid=log.sid("bob"), attributes={"topic": ""}))
    assert [s.attributes for s in next_viewer_sees(log, "v3")] == [{}, {}]


def test_a_speakers_name_change_shows_in_the_next_join_reply() -> None:
    log = started("alice")
    log(ParticipantUpdateRequested(room_id=ROOM, at=1, participant_id="alice", name="Dr. Alice"))
    assert [s.name for s in next_viewer_sees(log, "v1")] == ["Dr. Alice"]
    log(ParticipantUpdateRequested(room_id=ROOM, at=2, participant_id="alice", metadata="m"))
    assert [s.metadata for s in next_viewer_sees(log, "v2")] == ["m"]


def test_a_speakers_tracks_and_mutes_show_in_the_next_join_reply() -> None:
    log = started("alice")
    sid = log.sid("alice")
    track = TrackInfo(sid="TR_mic", kind="audio")
    log(TrackPublishRequested(room_id=ROOM, at=1, sid=sid, track=track))
    assert [s.tracks for s in next_viewer_sees(log, "v1")] == [(track,)]
    log(TrackMuteRequested(room_id=ROOM, at=2, sid=sid, track_sid="TR_mic", muted=True))
    ((muted,),) = [s.tracks for s in next_viewer_sees(log, "v2")]
    assert muted.muted
    log(TrackUnpublishRequested(room_id=ROOM, at=3, sid=sid, track_sid="TR_mic"))
    assert [s.tracks for s in next_viewer_sees(log, "v3")] == [()]


def test_a_promoted_viewer_joins_and_a_demoted_speaker_leaves_the_speaker_list() -> None:
    log = started("host")
    log.join("guest", viewer=True, grant=Grant(can_publish=False))
    assert [s.id for s in next_viewer_sees(log, "v1")] == ["host"]
    promote = ParticipantUpdateRequested(
        room_id=ROOM, at=1, participant_id="guest", is_viewer=False, grant=Grant()
    )
    log(promote)
    seen = next_viewer_sees(log, "v2")
    assert [(s.id, s.is_viewer) for s in seen] == [("host", False), ("guest", False)]
    log(ParticipantUpdateRequested(room_id=ROOM, at=2, participant_id="host", is_viewer=True))
    assert [s.id for s in next_viewer_sees(log, "v3")] == ["guest"]


def test_a_speaker_leaving_or_replaced_leaves_the_speaker_list() -> None:
    log = started("alice", "bob")
    log(LeaveRequested(room_id=ROOM, at=1, sid=log.sid("alice")))
    assert [s.id for s in next_viewer_sees(log, "v1")] == ["bob"]
    log.join("bob", name="Bob again")  # the same identity: the old session is kicked
    assert [(s.id, s.name) for s in next_viewer_sees(log, "v2")] == [("bob", "Bob again")]
    log.join("carol")
    assert [s.id for s in next_viewer_sees(log, "v3")] == ["bob", "carol"]


def test_a_speaker_does_not_see_itself_and_a_viewers_change_keeps_the_list() -> None:
    log = started("alice")
    out = log.join("bob")
    (accepted,) = directs(out, "reply.bob")
    assert [s.id for s in accepted.speakers] == ["alice"]
    views = log.state.rooms[ROOM].speaker_views
    log(MetadataSet(room_id=ROOM, at=1, sid=log.sid("warm"), metadata="a viewer's"))
    assert log.state.rooms[ROOM].speaker_views is views  # no speaker changed
    assert [s.id for s in next_viewer_sees(log, "v1")] == ["alice", "bob"]


def test_a_hidden_livestream_speaker_enters_the_list_when_it_becomes_visible() -> None:
    log = Log()
    log(RoomCreateRequested(room_id=ROOM, at=1, room_sid="RM_live", livestream=True))
    log.join("quiet")
    log.join("loud", metadata="on air")
    assert [s.id for s in next_viewer_sees(log, "v1")] == ["loud"]
    track = TrackInfo(sid="TR_1", kind="audio")
    log(TrackPublishRequested(room_id=ROOM, at=2, sid=log.sid("quiet"), track=track))
    assert [s.id for s in next_viewer_sees(log, "v2")] == ["quiet", "loud"]


def test_subscriptions_stay_sorted_and_unique() -> None:
    log = started("alice", "bob")
    for who in ("bob", "alice"):
        track = TrackInfo(sid=f"TR_{who}", kind="audio")
        log(TrackPublishRequested(room_id=ROOM, at=1, sid=log.sid(who), track=track))
    sub = log.sid("warm")
    for who, on in (("bob", True), ("alice", True), ("bob", True), ("alice", False)):
        log(
            SubscriptionRequested(
                room_id=ROOM, at=2, sid=sub, participant_id=who, kind="audio", subscribed=on
            )
        )
        session = log.state.rooms[ROOM].sessions[sub]
        assert list(session.subscriptions) == sorted(set(session.subscriptions))
    assert log.state.rooms[ROOM].sessions[sub].subscriptions == (("bob", "audio"),)
