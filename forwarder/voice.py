"""Which rooms hear whom: audio tracks grouped by room, and when to report their speakers.

Pure and clock-free, like `forwarder.speakers` under it. `MediaSessions` tells it which
audio tracks are published here, by whom and in which room (`publish`, `unpublish`, mutes);
the forwarder hands it each audio packet's level (`observe`); the service calls
`tick(now_ms)` every `VOICE_REPORT_INTERVAL_MS` and publishes the `SpeakerReport`s it
returns on each room's voice subject. A room is reported when its speakers (who, and in
which order) changed since its last report, and again every `VOICE_REFRESH_MS` while not
empty, so edges can tell a live report from one of a forwarder that went away. Levels alone
changing do not make a report: the point is one small frame per room at most four times a
second, whatever the room's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from forwarder.speakers import SpeakerDetector
from schemas.media import VOICE_REFRESH_MS, SpeakerReport
from schemas.models import MAX_ACTIVE_SPEAKERS, ActiveSpeaker


@dataclass(slots=True)
class _AudioTrack:
    room_id: str
    participant_id: str
    muted: bool = False


@dataclass(slots=True)
class _RoomReport:
    speakers: tuple[str, ...] = ()
    sent_at: int = 0


class RoomVoices:
    """The audio tracks published on one forwarder and their rooms' speaker reports."""

    def __init__(self, forwarder_id: str, detector: SpeakerDetector | None = None) -> None:
        self.forwarder_id = forwarder_id
        self.detector = detector if detector is not None else SpeakerDetector()
        self._tracks: dict[str, _AudioTrack] = {}
        self._reported: dict[str, _RoomReport] = {}
        self.reports = 0
        """Reports `tick` returned so far."""

    def publish(self, track_id: str, room_id: str, participant_id: str, *, muted: bool) -> None:
        """An audio track of `participant_id` in `room_id` is published here (or its mute
        changed). Idempotent; a muted track is not followed, so it never speaks."""
        track = self._tracks.get(track_id)
        if track is None:
            track = self._tracks[track_id] = _AudioTrack(room_id, participant_id)
        track.muted = muted
        if muted:
            self.detector.remove(track_id)
        else:
            self.detector.add(track_id)

    def unpublish(self, track_id: str) -> None:
        self._tracks.pop(track_id, None)
        self.detector.remove(track_id)

    def observe(self, track_id: str, level: int) -> None:
        """One received audio packet's RFC 6464 level (-dBov) on `track_id`."""
        self.detector.observe(track_id, level)

    def tick(self, now_ms: int) -> list[SpeakerReport]:
        """The reports due now (see the module docstring), one per room at most."""
        by_room: dict[str, dict[str, float]] = {}
        for speaking in self.detector.tick(now_ms):
            track = self._tracks.get(speaking.track_id)
            if track is None:
                continue
            levels = by_room.setdefault(track.room_id, {})
            # loudest first already: a participant's first track is its loudest
            levels.setdefault(track.participant_id, speaking.level)
        reports: list[SpeakerReport] = []
        for room_id in sorted(set(by_room) | set(self._reported)):
            levels = by_room.get(room_id, {})
            ids = tuple(levels)[:MAX_ACTIVE_SPEAKERS]
            last = self._reported.get(room_id)
            if last is None:
                if not ids:
                    continue
                last = self._reported[room_id] = _RoomReport()
            elif ids == last.speakers and (not ids or now_ms - last.sent_at < VOICE_REFRESH_MS):
                continue
            last.speakers, last.sent_at = ids, now_ms
            if not ids:
                del self._reported[room_id]  # reported empty once: nothing to refresh
            reports.append(
                SpeakerReport(
                    room_id=room_id,
                    forwarder_id=self.forwarder_id,
                    speakers=tuple(
                        ActiveSpeaker(participant_id=pid, level=round(levels[pid], 4))
                        for pid in ids
                    ),
                )
            )
        self.reports += len(reports)
        return reports


__all__ = ["RoomVoices"]
