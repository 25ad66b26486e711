"""Active speakers for one room on one edge: forwarders' reports merged, then coalesced.

Each forwarder carrying audio of the room publishes a `SpeakerReport` on the room's voice
subject (`forwarder.voice`): on change, at most every 250 ms, and again every second while
not empty. An edge keeps the newest report of each forwarder, forgets a non-empty one
`VOICE_REPORT_TTL_MS` after it arrived (its forwarder went away without saying so), and
merges them: each participant once, at its loudest level, loudest first. The merged list
goes to the room's sockets as one `active_speakers` frame, framed once, when the speakers
(who, in which order) changed, and at most once per `window_ms` (250: four a second), the
last change always. `RoomVoice` is the pure part (clock-free: the caller passes `now_ms`);
`edge.fanout.RoomFanout` runs its timer and delivers through `edge.counts.CountsRounds`
(each socket's latest-wins slot, within the counts CPU budget).
"""

from __future__ import annotations

from schemas.media import VOICE_REPORT_TTL_MS, SpeakerReport
from schemas.models import MAX_ACTIVE_SPEAKERS, ActiveSpeaker

WINDOW_MS = 250
"""At most one `active_speakers` frame per room per window, per edge."""


class RoomVoice:
    """One room's forwarder reports and what its sockets were last sent."""

    def __init__(self, *, window_ms: int = WINDOW_MS, ttl_ms: int = VOICE_REPORT_TTL_MS) -> None:
        self.window_ms = window_ms
        self.ttl_ms = ttl_ms
        self._reports: dict[str, tuple[tuple[ActiveSpeaker, ...], int]] = {}
        self._sent: tuple[str, ...] = ()
        self._sent_at: int | None = None

    def report(self, report: SpeakerReport, now_ms: int) -> None:
        """A forwarder's newest report for the room (an empty one withdraws its speakers)."""
        if report.speakers:
            self._reports[report.forwarder_id] = (report.speakers, now_ms)
        else:
            self._reports.pop(report.forwarder_id, None)

    def speakers(self, now_ms: int) -> tuple[ActiveSpeaker, ...]:
        """The merged speakers now (expired reports dropped), loudest first."""
        for forwarder_id, (_, at) in list(self._reports.items()):
            if now_ms - at >= self.ttl_ms:
                del self._reports[forwarder_id]
        loudest: dict[str, float] = {}
        for speakers, _ in self._reports.values():
            for speaker in speakers:
                if speaker.level > loudest.get(speaker.participant_id, -1.0):
                    loudest[speaker.participant_id] = speaker.level
        ranked = sorted(loudest.items(), key=lambda item: (-item[1], item[0]))
        return tuple(
            ActiveSpeaker(participant_id=pid, level=level)
            for pid, level in ranked[:MAX_ACTIVE_SPEAKERS]
        )

    def due(self, now_ms: int) -> tuple[ActiveSpeaker, ...] | None:
        """The speakers to send now, or None: unchanged, or the window is not over yet."""
        speakers = self.speakers(now_ms)
        ids = tuple(s.participant_id for s in speakers)
        if ids == self._sent:
            return None
        if self._sent_at is not None and now_ms - self._sent_at < self.window_ms:
            return None
        self._sent, self._sent_at = ids, now_ms
        return speakers

    def next_check(self, now_ms: int) -> int | None:
        """When `due` may have something new (a change waiting for its window, or a report
        expiring); None when nothing can change without a new report."""
        ids = tuple(s.participant_id for s in self.speakers(now_ms))
        if ids != self._sent:
            return now_ms if self._sent_at is None else max(now_ms, self._sent_at + self.window_ms)
        if not self._reports:
            return None
        return min(at for _, at in self._reports.values()) + self.ttl_ms


__all__ = ["WINDOW_MS", "RoomVoice"]
