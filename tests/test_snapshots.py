"""Room snapshots: the format written now, the older format still read, and bad bytes.

Golden bytes pin both formats: a change to `SessionRecord`'s fields or their order that
would make older snapshots unreadable fails here, not at a production restart.
"""

from __future__ import annotations

import msgpack
import msgspec
import pytest

from schemas.log import (
    ForwarderAssigned,
    JoinRequested,
    LogEvent,
    SessionDisconnected,
    SubscriptionRequested,
    TrackPublishRequested,
)
from schemas.models import Grant, TrackInfo
from statekeeper.errors import SnapshotFormatUnknown
from statekeeper.fold import apply
from statekeeper.snapshots import (
    SNAPSHOT_FORMAT,
    digest,
    pack_revocations,
    pack_room,
    restore,
    revocations_key,
    unpack_revocations,
    unpack_room,
)
from statekeeper.state import State, participant_info

ROOM = "golden-room"
VIEWER = Grant(can_publish=False, can_publish_data=False)


def events() -> list[LogEvent]:
    """Two speakers (tracks, attributes, a forwarder, subscriptions) and a viewer in its grace."""
    return [
        JoinRequested(
            room_id=ROOM,
            at=1_000,
            sid="PA_alice",
            participant_id="alice",
            name="Alice",
            edge_id="ED_1",
            token_id="J1",
            token_expires_at=9_000,
        ),
        JoinRequested(
            room_id=ROOM,
            at=1_001,
            sid="PA_bob",
            participant_id="bob",
            edge_id="ED_1",
            metadata="m",
            attributes={"b": "2", "a": "1"},
        ),
        JoinRequested(
            room_id=ROOM,
            at=1_002,
            sid="PA_v",
            participant_id="v",
            is_viewer=True,
            grant=VIEWER,
            edge_id="ED_2",
        ),
        TrackPublishRequested(
            room_id=ROOM,
            at=1_003,
            sid="PA_alice",
            track=TrackInfo(sid="TR_b", kind="video", source="camera", name="cam"),
        ),
        TrackPublishRequested(
            room_id=ROOM,
            at=1_004,
            sid="PA_alice",
            track=TrackInfo(sid="TR_a", kind="audio", muted=True),
        ),
        ForwarderAssigned(room_id=ROOM, at=1_005, sid="PA_alice", forwarder_id="FW_1"),
        SubscriptionRequested(
            room_id=ROOM,
            at=1_006,
            sid="PA_bob",
            participant_id="alice",
            kind="video",
            subscribed=True,
        ),
        SubscriptionRequested(
            room_id=ROOM,
            at=1_007,
            sid="PA_bob",
            participant_id="alice",
            kind="audio",
            subscribed=True,
        ),
        SessionDisconnected(room_id=ROOM, at=1_008, sid="PA_v", edge_id="ED_2"),
    ]


def golden_state() -> State:
    state = State()
    for seq, event in enumerate(events(), start=1):
        apply(state, seq, event)
    return state


FORMAT_1 = bytes.fromhex(
    "9f01ab676f6c64656e2d726f6f6da4524d5f31cd03e8a000cd012c14c20000800993dc0014a850415f616c"
    "696365a5616c696365a5416c696365c2a87374616e646172640fa080cd03e801a445445f31a24a31cd2328"
    "c300c39295a454525f62a5766964656fa663616d657261a363616dc295a454525f61a5617564696fa7756e"
    "6b6e6f776ea0c390a446575f3101dc0014a650415f626f62a3626f62a0c2a87374616e646172640fa16d82"
    "a162a132a161a131cd03e902a445445f31a000c300c3909292a5616c696365a5617564696f92a5616c6963"
    "65a5766964656fa001dc0014a450415f76a176a0c3a87374616e646172640aa080cd03ea03a445445f32a0"
    "00c2cd03f0c39090a00101"
)
"""`pack_room` of `golden_state()` by the statekeeper of 2026-12-07 (format 1)."""

FORMAT_2 = bytes.fromhex(
    "9e02ab676f6c64656e2d726f6f6da4524d5f31cd03e8a000cd012c14c20000090193dc0015a850415f616c"
    "696365a5616c696365a5416c696365c2a87374616e6461726480a080cd03e801a445445f31a24a31cd2328"
    "c300c382a454525f6284a3736964a454525f62a46b696e64a5766964656fa6736f75726365a663616d6572"
    "61a46e616d65a363616da454525f6183a3736964a454525f61a46b696e64a5617564696fa56d75746564c3"
    "90a446575f3101c0dc0015a650415f626f62a3626f62a0c2a87374616e6461726480a16d82a162a132a161"
    "a131cd03e902a445445f31a000c300c3809292a5616c696365a5617564696f92a5616c696365a576696465"
    "6fa001c0dc0015a450415f76a176a0c3a87374616e6461726482ab63616e5f7075626c697368c2b063616e"
    "5f7075626c6973685f64617461c2a080cd03ea03a445445f32a000c2cd03f0c38090a001c0"
)
"""`pack_room` of `golden_state()` in format 2."""


def test_format_1_snapshots_are_still_read() -> None:
    expected = golden_state()
    room = unpack_room(FORMAT_1)
    assert room == expected.rooms[ROOM]
    assert digest(restore({ROOM: (9, FORMAT_1)}, (0,))) == digest(expected)
    # Its indexes are rebuilt as the fold builds them.
    assert room.by_identity == {"alice": "PA_alice", "bob": "PA_bob", "v": "PA_v"}
    assert room.by_edge == {"ED_1": {"PA_alice", "PA_bob"}, "ED_2": {"PA_v"}}
    assert list(room.speaker_sids) == ["PA_alice", "PA_bob"]
    assert (room.speakers, room.viewers) == (2, 1)
    assert room.sessions["PA_bob"].subscriptions == (("alice", "audio"), ("alice", "video"))


def test_the_format_written_now_is_pinned() -> None:
    packed = pack_room(golden_state().rooms[ROOM])
    assert SNAPSHOT_FORMAT == 2 and msgpack.unpackb(packed)[0] == 2
    assert packed == FORMAT_2
    assert unpack_room(FORMAT_2) == golden_state().rooms[ROOM]


def test_a_round_trip_keeps_every_field_and_the_order_of_tracks_and_attributes() -> None:
    room = golden_state().rooms[ROOM]
    again = unpack_room(pack_room(room))
    assert again == room
    for sid, session in room.sessions.items():
        assert participant_info(again.sessions[sid]) == participant_info(session)
        assert list(again.sessions[sid].tracks) == list(session.tracks)
        assert list(again.sessions[sid].attributes) == list(session.attributes)
    assert again.sessions["PA_v"].grant == VIEWER


def test_packing_leaves_the_rooms_caches_as_they_were() -> None:
    room = golden_state().rooms[ROOM]
    views = {sid: participant_info(s) for sid, s in room.sessions.items()}
    pack_room(room)
    assert all(room.sessions[sid].info is view for sid, view in views.items())
    assert all(s.info is None for s in unpack_room(pack_room(room)).sessions.values())


def test_snapshots_of_unknown_formats_or_no_snapshot_are_refused_by_name() -> None:
    newer = msgspec.msgpack.encode([3, ROOM, "RM_x"])
    with pytest.raises(SnapshotFormatUnknown) as refused:
        unpack_room(newer)
    assert (refused.value.found, refused.value.readable) == (3, (1, 2))
    with pytest.raises(SnapshotFormatUnknown) as garbage:
        unpack_room(b"\xc1 not msgpack")
    assert garbage.value.found is None
    with pytest.raises(SnapshotFormatUnknown, match="revocations snapshot of format 9"):
        unpack_revocations(msgspec.msgpack.encode([9, []]))
    key = revocations_key((0,))
    assert unpack_revocations(pack_revocations({"J1": 5})) == {"J1": 5}
    assert restore({key: (1, pack_revocations({"J1": 5}))}, (0,)).revoked == {"J1": 5}
