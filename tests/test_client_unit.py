"""The client SDK's pure parts, fed frames directly: no network, no server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas.client import (
    ActiveSpeakersChanged,
    CountsChanged,
    DataReceived,
    Disconnect,
    HandChanged,
    JoinAccepted,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomUpdated,
    TierChanged,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
)
from schemas.models import ActiveSpeaker, Counts, Grant, ParticipantInfo, RoomInfo, TrackInfo
from stagecast import errors
from stagecast.client import (
    ConnectionState,
    DataMessage,
    ParticipantCounts,
    RemoteParticipant,
    Room,
    StreamEvent,
    socket_url,
    socket_urls,
)
from stagecast.client.connection import http_url
from stagecast.client.events import EventEmitter
from stagecast.client.session import ClientSession

# --------------------------------------------------------------------------- helpers


ONE_SPEAKER = Counts(speaker=1, viewer=0, total=1)
DEFAULT_GRANT = Grant()


def speaker(pid: str, sid: str = "", **kw: Any) -> ParticipantInfo:
    return ParticipantInfo(sid=sid or f"PA_{pid}", id=pid, **kw)


def joined(
    me: ParticipantInfo | None = None,
    speakers: tuple[ParticipantInfo, ...] = (),
    seq: int = 10,
    counts: Counts = ONE_SPEAKER,
    grant: Grant = DEFAULT_GRANT,
    metadata: str = "",
) -> JoinAccepted:
    return JoinAccepted(
        id=1,
        seq=seq,
        room=RoomInfo(id="r1", sid="RM_1", metadata=metadata),
        participant=me or speaker("me"),
        grant=grant,
        speakers=speakers,
        counts=counts,
        resume_token="resume-1",
    )


class Recorder:
    """Collects (event, args) for every room event."""

    def __init__(self, room: Room) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        for event in (
            "participant-joined",
            "participant-left",
            "participant-count-changed",
            "room-metadata-changed",
            "data-received",
            "tier-changed",
            "hand-raised",
            "hand-lowered",
        ):
            room.on(event, lambda *args, _e=event: self.events.append((_e, args)))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]

    def ids(self, event: str) -> list[str]:
        return [a[0].id for e, a in self.events if e == event]


def new_room(snapshot: JoinAccepted | None = None) -> Room:
    room = Room("ws://edge.test:7880", "token", auto_subscribe=False)  # no loop here
    room.apply_joined(snapshot or joined())
    return room


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://127.0.0.1:7880", "ws://127.0.0.1:7880/rtc"),
        ("ws://127.0.0.1:7880/", "ws://127.0.0.1:7880/rtc"),
        ("http://127.0.0.1:7880", "ws://127.0.0.1:7880/rtc"),
        ("https://edge.example.com", "wss://edge.example.com/rtc"),
        ("wss://edge.example.com/rtc", "wss://edge.example.com/rtc"),
        ("https://example.com/stagecast/", "wss://example.com/stagecast/rtc"),
        ("HTTP://h:1?x=1#frag", "ws://h:1/rtc"),
    ],
)
def test_socket_url(given: str, expected: str) -> None:
    assert socket_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://h", "127.0.0.1:7880", "ws://", ""])
def test_socket_url_refuses_non_edge_urls(bad: str) -> None:
    with pytest.raises(ValueError):
        socket_url(bad)


def test_socket_urls_for_a_list_keeps_order_and_drops_duplicates() -> None:
    urls = ["http://a:1", "ws://b:2", "ws://a:1/rtc"]
    assert socket_urls(urls) == ["ws://a:1/rtc", "ws://b:2/rtc"]
    assert socket_urls("http://a:1") == ["ws://a:1/rtc"]
    with pytest.raises(ValueError):
        socket_urls([])


def test_http_url_for_the_server_api() -> None:
    assert http_url("ws://h:7880/rtc") == "http://h:7880"
    assert http_url("wss://h/base/") == "https://h/base"
    assert http_url("http://h:1") == "http://h:1"


# --------------------------------------------------------------------------- the emitter


def test_emitter_replays_retroactive_events_to_new_listeners_only() -> None:
    present = ["a", "b"]
    emitter = EventEmitter(["joined", "left"], set())
    emitter.retroactive("joined", lambda: [(p,) for p in present])
    first: list[str] = []
    emitter.on("joined", first.append)
    assert first == ["a", "b"]
    emitter.emit("joined", "c")
    second: list[str] = []
    present.append("c")
    emitter.on("joined", second.append)
    assert first == ["a", "b", "c"]
    assert second == ["a", "b", "c"]
    left: list[str] = []
    emitter.on("left", left.append)  # not retroactive
    assert left == []


def test_emitter_off_and_unknown_events() -> None:
    emitter = EventEmitter(["x"], set())
    got: list[int] = []
    emitter.on("x", got.append)
    emitter.emit("x", 1)
    emitter.off("x", got.append)
    emitter.off("x", got.append)  # absent: no error
    emitter.emit("x", 2)
    assert got == [1]
    with pytest.raises(ValueError, match="unknown event"):
        emitter.on("nope", got.append)


def test_emitter_survives_a_failing_listener(caplog: pytest.LogCaptureFixture) -> None:
    emitter = EventEmitter(["x"], set())
    got: list[int] = []

    def boom(_: int) -> None:
        raise RuntimeError("listener bug")

    emitter.on("x", boom)
    emitter.on("x", got.append)
    emitter.emit("x", 1)
    assert got == [1]
    assert "listener bug" in caplog.text


async def test_emitter_runs_async_listeners_as_tracked_tasks() -> None:
    tasks: set[asyncio.Task[Any]] = set()
    emitter = EventEmitter(["x"], tasks)
    got: list[int] = []

    async def slow(value: int) -> None:
        await asyncio.sleep(0)
        got.append(value)

    emitter.on("x", slow)
    emitter.on("x", lambda v: slow(v * 10))  # a lambda returning a coroutine counts too
    emitter.emit("x", 1)
    assert len(tasks) == 2
    await asyncio.gather(*tasks)
    assert sorted(got) == [1, 10]
    assert not tasks


# --------------------------------------------------------------------------- the roster


def test_joined_snapshot_fills_speakers_and_replays_them() -> None:
    room = new_room(joined(speakers=(speaker("alice"), speaker("bob"))))
    assert set(room.remote_participants) == {"alice", "bob"}
    assert room.local_participant.id == "me"
    assert room.counts == ParticipantCounts(1, 0, 1)
    seen: list[str] = []
    room.on("participant-joined", lambda p: seen.append(p.id))
    assert seen == ["alice", "bob"]


def test_speaker_frames_keep_the_map_in_sync() -> None:
    room = new_room()
    rec = Recorder(room)
    room.handle_frame(ParticipantJoined(seq=11, participant=speaker("alice")))
    room.handle_frame(ParticipantJoined(seq=12, participant=speaker("bob")))
    assert set(room.remote_participants) == {"alice", "bob"}
    room.handle_frame(ParticipantLeft(seq=13, sid="PA_alice", participant_id="alice"))
    assert set(room.remote_participants) == {"bob"}
    assert rec.ids("participant-joined") == ["alice", "bob"]
    assert rec.ids("participant-left") == ["alice"]


def test_own_and_viewer_frames_never_enter_the_map() -> None:
    room = new_room()
    rec = Recorder(room)
    room.handle_frame(ParticipantJoined(seq=11, participant=speaker("me")))
    room.handle_frame(
        ParticipantJoined(seq=12, participant=ParticipantInfo(sid="PA_v", id="v", is_viewer=True))
    )
    room.handle_frame(ParticipantLeft(seq=13, sid="PA_me", participant_id="me"))
    assert room.remote_participants == {}
    assert rec.events == []


def test_stale_frames_are_dropped_by_seq() -> None:
    room = new_room(joined(seq=20))
    rec = Recorder(room)
    room.handle_frame(ParticipantJoined(seq=19, participant=speaker("old")))  # before the join
    room.handle_frame(ParticipantJoined(seq=21, participant=speaker("alice")))
    room.handle_frame(ParticipantLeft(seq=22, sid="PA_alice", participant_id="alice"))
    room.handle_frame(ParticipantJoined(seq=21, participant=speaker("alice")))  # re-sent
    assert room.remote_participants == {}
    assert rec.ids("participant-joined") == ["alice"]
    # frames of one sequence number (a kick and a join, say) all apply
    room.handle_frame(ParticipantJoined(seq=23, participant=speaker("bob")))
    room.handle_frame(ParticipantJoined(seq=23, participant=speaker("carol")))
    assert set(room.remote_participants) == {"bob", "carol"}


def test_counts_have_their_own_sequence_and_only_changes_emit() -> None:
    room = new_room(joined(seq=20, counts=Counts(speaker=1, viewer=0, total=1)))
    rec = Recorder(room)
    room.handle_frame(ParticipantJoined(seq=30, participant=speaker("alice")))
    # a counts frame derived from an earlier log position than the last speaker frame is
    # still news for the counts stream
    room.handle_frame(CountsChanged(seq=25, counts=Counts(speaker=2, viewer=5, total=7)))
    room.handle_frame(CountsChanged(seq=24, counts=Counts(speaker=9, viewer=9, total=18)))
    room.handle_frame(CountsChanged(seq=26, counts=Counts(speaker=2, viewer=5, total=7)))
    counts = [a[0] for e, a in rec.events if e == "participant-count-changed"]
    assert counts == [ParticipantCounts(2, 5, 7)]
    assert room.counts == ParticipantCounts(2, 5, 7)


def test_active_speakers_name_known_participants_loudest_first() -> None:
    room = new_room(joined(speakers=(speaker("alice"), speaker("bob"))))
    seen: list[list[str]] = []
    room.on("active-speakers-changed", lambda ps: seen.append([p.id for p in ps]))

    def frame(*levels: tuple[str, float]) -> ActiveSpeakersChanged:
        return ActiveSpeakersChanged(
            speakers=tuple(ActiveSpeaker(participant_id=p, level=lv) for p, lv in levels)
        )

    room.handle_frame(frame(("bob", 0.3), ("me", 0.2), ("stranger", 0.1)))
    assert seen == [["bob", "me"]]  # a participant not known here is left out
    assert [p.id for p in room.active_speakers] == ["bob", "me"]
    bob, alice = room.remote_participants["bob"], room.remote_participants["alice"]
    assert bob.is_speaking and bob.audio_level == 0.3
    assert room.local_participant.is_speaking and not alice.is_speaking
    room.handle_frame(frame(("alice", 0.4)))
    assert seen[-1] == ["alice"] and not bob.is_speaking and bob.audio_level == 0.0
    room.handle_frame(frame())
    assert seen[-1] == [] and room.active_speakers == [] and not alice.is_speaking


def test_duplicate_identity_replaces_the_speaker_object() -> None:
    room = new_room(joined(speakers=(speaker("alice", sid="PA_1"),)))
    rec = Recorder(room)
    rec.events.clear()
    old = room.remote_participants["alice"]
    # the statekeeper kicks the old session and admits the new one at one sequence
    room.handle_frame(ParticipantLeft(seq=11, sid="PA_1", participant_id="alice"))
    room.handle_frame(ParticipantJoined(seq=11, participant=speaker("alice", sid="PA_2")))
    # a late leave of the old session does not remove the new one
    room.handle_frame(ParticipantLeft(seq=12, sid="PA_1", participant_id="alice"))
    assert room.remote_participants["alice"].sid == "PA_2"
    assert room.remote_participants["alice"] is not old
    assert rec.names() == ["participant-left", "participant-joined"]


def test_track_frames_and_retroactive_stream_published() -> None:
    video = TrackInfo(sid="TR_v", kind="video", source="camera")
    room = new_room(joined(speakers=(speaker("alice", tracks=(video,)),)))
    alice = room.remote_participants["alice"]
    events: list[tuple[str, Any]] = []
    for name in ("stream-published", "stream-unpublished", "track-muted", "track-unmuted"):
        alice.on(name, lambda ev, _n=name: events.append((_n, ev)))
    assert events == [("stream-published", StreamEvent("video", "camera", "TR_v"))]
    audio = TrackInfo(sid="TR_a", kind="audio", source="microphone")
    room.handle_frame(TrackPublished(seq=11, participant_id="alice", track=audio))
    room.handle_frame(TrackMuted(seq=12, participant_id="alice", track_sid="TR_a", muted=True))
    room.handle_frame(TrackMuted(seq=13, participant_id="alice", track_sid="TR_a", muted=False))
    room.handle_frame(
        TrackUnpublished(seq=14, participant_id="alice", track_sid="TR_v", kind="video")
    )
    assert [n for n, _ in events] == [
        "stream-published",
        "stream-published",
        "track-muted",
        "track-unmuted",
        "stream-unpublished",
    ]
    assert events[1][1]["kind"] == "audio"
    assert set(alice.tracks) == {"audio"}
    assert alice.tracks["audio"].muted is False


def test_participant_updated_changes_metadata_and_attributes() -> None:
    room = new_room(joined(speakers=(speaker("alice", attributes={"a": "1", "b": "2"}),)))
    alice = room.remote_participants["alice"]
    got: list[tuple[str, Any]] = []
    alice.on("metadata-changed", lambda m: got.append(("meta", m)))
    alice.on("attributes-changed", lambda a: got.append(("attrs", a)))
    updated = speaker("alice", metadata="hi", attributes={"a": "1", "c": "3"})
    room.handle_frame(ParticipantUpdated(seq=11, participant=updated))
    assert got == [("meta", "hi"), ("attrs", {"c": "3", "b": ""})]
    assert alice.metadata == "hi"
    assert alice.attributes == {"a": "1", "c": "3"}
    assert room.remote_participants["alice"] is alice


def test_room_metadata_data_and_hands() -> None:
    room = new_room(joined(grant=Grant(can_moderate=True)))
    rec = Recorder(room)
    room.handle_frame(RoomUpdated(seq=11, room=RoomInfo(id="r1", sid="RM_1", metadata="m")))
    room.handle_frame(DataReceived(payload=b"x", sender_id="alice", topic="chat"))
    viewer = ParticipantInfo(sid="PA_v", id="v1", is_viewer=True)
    room.handle_frame(HandChanged(seq=12, participant=viewer, raised=True))
    room.handle_frame(HandChanged(seq=13, participant=viewer, raised=False))
    assert room.metadata == "m"
    assert rec.names() == ["room-metadata-changed", "data-received", "hand-raised", "hand-lowered"]
    assert rec.events[1][1][0] == DataMessage(b"x", "alice", "chat", True)
    hand: RemoteParticipant = rec.events[2][1][0]
    assert hand.id == "v1" and hand.is_viewer
    assert "v1" not in room.remote_participants


def test_hand_raised_is_retroactive_for_hands_still_up() -> None:
    room = new_room(joined(grant=Grant(can_moderate=True)))
    for seq, (identity, raised) in enumerate([("v1", True), ("v2", True), ("v2", False)], 12):
        info = ParticipantInfo(sid=f"PA_{identity}", id=identity, is_viewer=True)
        room.handle_frame(HandChanged(seq=seq, participant=info, raised=raised))
    late: list[str] = []
    room.on("hand-raised", lambda p: late.append(p.id))  # a listener added after the fact
    assert late == ["v1"]


def test_tier_changed_updates_the_local_participant() -> None:
    me = ParticipantInfo(sid="PA_me", id="me", is_viewer=True)
    room = new_room(joined(me=me, grant=Grant(can_publish=False)))
    rec = Recorder(room)
    assert room.local_participant.is_viewer
    promoted = ParticipantInfo(sid="PA_me", id="me", is_viewer=False)
    room.handle_frame(
        TierChanged(seq=11, participant=promoted, grant=Grant(), resume_token="resume-2")
    )
    room.handle_frame(ParticipantJoined(seq=11, participant=promoted))  # our own broadcast
    assert not room.local_participant.is_viewer
    assert room.local_participant.grant.can_publish
    assert room._session.resume_token == "resume-2"
    assert rec.names() == ["tier-changed"]


def test_resumed_snapshot_emits_only_the_differences() -> None:
    room = new_room(joined(speakers=(speaker("alice"), speaker("bob")), seq=10))
    rec = Recorder(room)
    rec.events.clear()
    bob = room.remote_participants["bob"]
    snapshot = joined(
        speakers=(speaker("bob"), speaker("carol")),
        seq=40,
        counts=Counts(speaker=3, viewer=2, total=5),
        metadata="new",
    )
    room.apply_joined(snapshot)
    assert set(room.remote_participants) == {"bob", "carol"}
    assert room.remote_participants["bob"] is bob
    assert sorted(rec.names()) == sorted(
        [
            "room-metadata-changed",
            "participant-left",
            "participant-joined",
            "participant-count-changed",
        ]
    )
    assert rec.ids("participant-left") == ["alice"]
    assert rec.ids("participant-joined") == ["carol"]
    room.handle_frame(ParticipantJoined(seq=39, participant=speaker("dave")))  # stale
    assert "dave" not in room.remote_participants


async def test_subscribe_checks_tier_and_publication_locally() -> None:
    viewer = ParticipantInfo(sid="PA_v", id="v1", is_viewer=True)
    room = new_room()
    transient = RemoteParticipant(viewer, room)
    with pytest.raises(errors.InvalidPermissions):
        await transient.subscribe("video")
    room.handle_frame(ParticipantJoined(seq=11, participant=speaker("alice")))
    with pytest.raises(errors.NotPublished):
        await room.remote_participants["alice"].subscribe("audio")
    with pytest.raises(ValueError):
        await room.remote_participants["alice"].subscribe("smell")  # type: ignore[arg-type]


async def test_viewer_cannot_publish_locally() -> None:
    me = ParticipantInfo(sid="PA_me", id="me", is_viewer=True)
    room = new_room(joined(me=me))
    with pytest.raises(errors.InvalidPermissions):
        await room.local_participant.publish("video")


def test_a_disconnect_frame_is_not_a_roster_change() -> None:
    room = new_room()
    rec = Recorder(room)
    room.handle_frame(Disconnect(reason="REMOVED"))
    assert rec.events == []
    assert room.connection_state is ConnectionState.CONNECTING  # the session decides


def test_session_terminal_reasons() -> None:
    from stagecast.client.connection import SignalConnection

    room = Room("ws://edge.test", "token", auto_subscribe=False)
    session: ClientSession = room._session

    class Lost:
        def __init__(self, disconnect: Disconnect | None, code: int | None) -> None:
            self.disconnect = disconnect
            self.close_code = code

    def reason(disconnect: Disconnect | None, code: int | None) -> str | None:
        lost: Any = Lost(disconnect, code)
        assert not isinstance(lost, SignalConnection)
        return session._terminal_reason(lost)

    assert reason(Disconnect(reason="REMOVED"), 4012) == "REMOVED"
    assert reason(None, 4011) == "DUPLICATE_IDENTITY"
    assert reason(None, 1006) is None
    assert reason(None, 1001) is None
    assert reason(Disconnect(reason="SERVER_SHUTDOWN", can_reconnect=True), 4017) is None
    assert reason(Disconnect(reason="SERVER_SHUTDOWN"), 4017) == "SERVER_SHUTDOWN"
