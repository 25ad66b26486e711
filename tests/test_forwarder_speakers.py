"""The active speaker detector: smoothing, thresholds with hysteresis, loudest first."""

from __future__ import annotations

import pytest

from forwarder.speakers import SpeakerDetector, amplitude, level_dbov
from forwarder.voice import RoomVoices
from schemas.media import SpeakerReport

TICK_MS = 250


def run(
    detector: SpeakerDetector, levels: dict[str, int | None], ticks: int, start: int
) -> list[list[str]]:
    """`ticks` ticks of 12 packets per track at the given level (None: no packets)."""
    seen = []
    for k in range(ticks):
        for track_id, level in levels.items():
            if level is not None:
                for _ in range(12):
                    detector.observe(track_id, level)
        seen.append([s.track_id for s in detector.tick(start + k * TICK_MS)])
    return seen


def test_levels_convert_between_dbov_and_amplitude() -> None:
    assert amplitude(0) == 1.0
    assert amplitude(20) == pytest.approx(0.1)
    assert amplitude(200) == amplitude(127)  # clamped to the extension's range
    assert level_dbov(amplitude(37)) == pytest.approx(37)
    assert level_dbov(0.0) == 127


def test_a_talker_is_reported_and_a_silent_track_is_not() -> None:
    detector = SpeakerDetector()
    detector.add("talker")
    detector.add("silent")
    seen = run(detector, {"talker": 25, "silent": 127}, ticks=4, start=0)
    assert seen[-1] == ["talker"]
    assert all("silent" not in tick for tick in seen)


def test_one_loud_packet_does_not_make_a_speaker() -> None:
    detector = SpeakerDetector()
    detector.add("a")
    for _ in range(11):
        detector.observe("a", 127)
    detector.observe("a", 0)  # one full-scale click among silence
    assert detector.tick(0) == []


def test_pauses_between_words_do_not_flap_but_silence_ends_speaking() -> None:
    detector = SpeakerDetector(hold_ms=600)
    detector.add("a")
    assert run(detector, {"a": 20}, ticks=3, start=0)[-1] == ["a"]
    # a 500 ms pause (DTX: no packets at all) keeps the speaker
    assert run(detector, {"a": None}, ticks=2, start=750) == [["a"], ["a"]]
    assert run(detector, {"a": 20}, ticks=2, start=1250) == [["a"], ["a"]]
    # lasting silence ends it, but only once it held for hold_ms below the stop threshold
    seen = run(detector, {"a": 127}, ticks=8, start=1750)
    assert seen[0] == ["a"]
    assert seen[-1] == []
    stopped = seen.index([])
    assert stopped * TICK_MS >= 600
    assert seen[stopped:] == [[]] * (len(seen) - stopped)


def test_levels_between_the_thresholds_keep_but_never_start_speaking() -> None:
    detector = SpeakerDetector(start_dbov=40, stop_dbov=50, hold_ms=0)
    detector.add("a")
    detector.add("b")
    assert run(detector, {"a": 45, "b": 30}, ticks=6, start=0)[-1] == ["b"]
    # b drops between the thresholds: still speaking; a never started at that level
    assert run(detector, {"a": 45, "b": 45}, ticks=6, start=1500)[-1] == ["b"]


def test_speakers_come_loudest_first_with_their_levels() -> None:
    detector = SpeakerDetector()
    for track in ("quiet", "loud", "mid"):
        detector.add(track)
    run(detector, {"quiet": 38, "loud": 10, "mid": 25}, ticks=5, start=0)
    for track, level in (("quiet", 38), ("loud", 10), ("mid", 25)):
        for _ in range(12):
            detector.observe(track, level)
    speaking = detector.tick(5 * TICK_MS)
    assert [s.track_id for s in speaking] == ["loud", "mid", "quiet"]
    assert speaking[0].track_id == "loud"
    assert level_dbov(speaking[0].level) == pytest.approx(10, abs=3)


def test_unfollowed_and_removed_tracks_are_never_reported() -> None:
    detector = SpeakerDetector()
    detector.observe("stranger", 0)
    detector.add("a")
    run(detector, {"a": 10}, ticks=3, start=0)
    detector.remove("a")
    assert "a" not in detector
    assert detector.tick(1000) == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        SpeakerDetector(start_dbov=60, stop_dbov=50)
    with pytest.raises(ValueError):
        SpeakerDetector(smoothing=0)
    with pytest.raises(ValueError):
        SpeakerDetector(hold_ms=-1)


# -- RoomVoices: tracks grouped by room, reports on change and refresh ----------------------


def talk(voices: RoomVoices, levels: dict[str, int]) -> None:
    for track_id, level in levels.items():
        for _ in range(12):
            voices.observe(track_id, level)


def test_rooms_are_reported_on_change_only_and_refreshed_while_not_empty() -> None:
    voices = RoomVoices("FW_1")
    voices.publish("TR_a", "room", "alice", muted=False)
    voices.publish("TR_b", "room", "bob", muted=False)
    voices.publish("TR_c", "other", "carol", muted=False)
    assert voices.tick(0) == []  # nobody talks: nothing to say
    reports = []
    for k in range(1, 5):
        talk(voices, {"TR_a": 20, "TR_b": 127, "TR_c": 127})
        reports += voices.tick(k * TICK_MS)
    assert len(reports) == 1
    (report,) = reports
    assert (report.room_id, report.forwarder_id) == ("room", "FW_1")
    assert [s.participant_id for s in report.speakers] == ["alice"]
    assert 0 < report.speakers[0].level <= 1
    # unchanged for a second: the same report again (a refresh edges can expire)
    talk(voices, {"TR_a": 20})
    (refresh,) = voices.tick(4 * TICK_MS + 1000)
    assert [s.participant_id for s in refresh.speakers] == ["alice"]
    # bob louder than alice: the order changed, reported at the next tick
    changed: list[SpeakerReport] = []
    for k in range(1, 5):
        talk(voices, {"TR_a": 30, "TR_b": 5})
        changed += voices.tick(4 * TICK_MS + 1000 + k * TICK_MS)
    assert [[s.participant_id for s in r.speakers] for r in changed][-1] == ["bob", "alice"]
    # everyone stops: one empty report, then silence on the subject
    quiet: list[SpeakerReport] = []
    for k in range(1, 12):
        quiet += voices.tick(10_000 + k * TICK_MS)
    assert quiet[-1].speakers == ()
    assert [r for r in quiet if r.speakers == ()] == [quiet[-1]]


def test_muted_and_unpublished_tracks_do_not_speak() -> None:
    voices = RoomVoices("FW_1")
    voices.publish("TR_a", "room", "alice", muted=True)
    for k in range(4):
        talk(voices, {"TR_a": 10})
        assert voices.tick(k * TICK_MS) == []
    voices.publish("TR_a", "room", "alice", muted=False)
    for k in range(4, 8):
        talk(voices, {"TR_a": 10})
        voices.tick(k * TICK_MS)
    voices.unpublish("TR_a")
    (gone,) = voices.tick(8 * TICK_MS)
    assert gone.speakers == ()


def test_a_participant_with_two_audio_tracks_is_listed_once() -> None:
    voices = RoomVoices("FW_1")
    voices.publish("TR_mic", "room", "alice", muted=False)
    voices.publish("TR_screen_audio", "room", "alice", muted=False)
    reports: list[SpeakerReport] = []
    for k in range(4):
        talk(voices, {"TR_mic": 20, "TR_screen_audio": 25})
        reports += voices.tick(k * TICK_MS)
    assert [s.participant_id for s in reports[-1].speakers] == ["alice"]
