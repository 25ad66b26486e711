"""Active speakers at the edge: forwarders' reports merged, coalesced, framed once."""

from __future__ import annotations

from edge.fanout import RoomFanout
from edge.metrics import EdgeMetrics
from edge.sendqueue import SendQueue
from edge.voice import RoomVoice
from edge.wsframe import binary_frame, frame_payload
from schemas.client import ActiveSpeakersChanged
from schemas.codec import decode, encode
from schemas.media import SpeakerReport
from schemas.models import ActiveSpeaker
from tests.polling import eventually
from tests.test_edge import MemorySink


def report(forwarder: str, *speakers: tuple[str, float], room: str = "room") -> SpeakerReport:
    return SpeakerReport(
        room_id=room,
        forwarder_id=forwarder,
        speakers=tuple(ActiveSpeaker(participant_id=p, level=lv) for p, lv in speakers),
    )


def ids(speakers: tuple[ActiveSpeaker, ...] | None) -> list[str] | None:
    return None if speakers is None else [s.participant_id for s in speakers]


def test_reports_of_several_forwarders_merge_loudest_first() -> None:
    voice = RoomVoice()
    voice.report(report("FW_1", ("alice", 0.2), ("bob", 0.05)), 0)
    voice.report(report("FW_2", ("carol", 0.1), ("alice", 0.3)), 0)  # alice relayed twice
    merged = voice.due(0)
    assert ids(merged) == ["alice", "carol", "bob"]
    assert merged is not None and merged[0].level == 0.3


def test_at_most_one_frame_per_window_and_the_last_change_always() -> None:
    voice = RoomVoice(window_ms=250)
    voice.report(report("FW_1", ("alice", 0.2)), 0)
    assert ids(voice.due(0)) == ["alice"]
    assert voice.due(10) is None  # unchanged
    voice.report(report("FW_1", ("bob", 0.2)), 100)
    assert voice.due(100) is None  # changed, but inside the window
    assert voice.next_check(100) == 250
    voice.report(report("FW_1", ("carol", 0.2)), 200)
    assert ids(voice.due(250)) == ["carol"]  # the newest, once the window is over
    voice.report(report("FW_1"), 300)  # nobody talks any more
    assert voice.due(300) is None
    assert ids(voice.due(500)) == []
    assert voice.next_check(600) is None  # nothing left that could change alone


def test_a_report_of_a_forwarder_that_went_away_expires() -> None:
    voice = RoomVoice(ttl_ms=3000)
    voice.report(report("FW_1", ("alice", 0.2)), 0)
    voice.report(report("FW_2", ("bob", 0.1)), 2000)
    assert ids(voice.due(2000)) == ["alice", "bob"]
    assert voice.next_check(2000) == 3000
    assert ids(voice.due(3000)) == ["bob"]
    voice.report(report("FW_2", ("bob", 0.1)), 3500)  # a refresh keeps it
    assert voice.due(5500) is None


def test_the_send_queue_keeps_one_voice_slot_beside_the_counts_slot() -> None:
    sink = MemorySink()
    queue = SendQueue(4, sink)
    assert queue.put_voice(b"v0") and sink.frames == [b"v0"]
    sink.paused = True
    assert queue.put(b"a") and queue.put_voice(b"v1") and queue.put_counts(b"c1")
    assert queue.put_voice(b"v2") and queue.put_counts(b"c2")  # both replaced in place
    assert len(queue) == 3
    sink.resume()
    assert sink.frames == [b"v0", b"a", b"v2", b"c2"]


class VoiceMember:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.voice: list[bytes] = []

    def deliver_voice(self, frame: bytes, seq: int) -> bool:
        self.voice.append(frame)
        return True


async def test_room_fanout_frames_the_merged_speakers_once_for_every_socket() -> None:
    room = RoomFanout("room", EdgeMetrics())
    members = [VoiceMember(f"PA_{k}") for k in range(3)]
    for member in members:
        room.members[member.sid] = member  # type: ignore[assignment]
    first = report("FW_1", ("alice", 0.2))
    room.route("voice", first, encode(first))
    other_room = report("FW_1", ("mallory", 0.9), room="elsewhere")
    room.route("voice", other_room, encode(other_room))  # not this room's: ignored
    (frame,) = members[0].voice
    assert all(m.voice[0] is frame for m in members)  # framed once, the same bytes
    assert frame == binary_frame(
        encode(ActiveSpeakersChanged(speakers=(ActiveSpeaker(participant_id="alice", level=0.2),)))
    )
    assert room.voice_frame is frame  # what a socket joining later gets
    second = report("FW_1", ("bob", 0.3), ("alice", 0.2))
    room.route("voice", second, encode(second))
    assert len(members[0].voice) == 1  # inside the window: sent when it ends
    await eventually(lambda: len(members[0].voice) == 2, what="the change after the window")
    message = decode(frame_payload(members[0].voice[1]))
    assert isinstance(message, ActiveSpeakersChanged)
    assert [s.participant_id for s in message.speakers] == ["bob", "alice"]
    nobody = report("FW_1")
    room.route("voice", nobody, encode(nobody))
    await eventually(lambda: len(members[0].voice) == 3, what="the empty list")
    assert room.voice_frame == b""  # a socket joining now is told nothing
    room.close()
