"""Who is talking, from the audio levels publishers put in their RTP headers (RFC 6464).

Pure and clock-free. The forwarder hands every audio packet's level to `observe` (one
addition, no decoding: the level is the ``ssrc-audio-level`` header extension, in -dBov
from 0, loudest, to 127, silence) and calls `tick(now_ms)` on a timer. Each tick:

- **smooths**: the mean of the levels since the last tick, in dB (no packet at all is
  silence: a publisher using DTX sends nothing while quiet), is folded into an exponential
  moving average, so one loud click or one dropped packet does not decide;
- **thresholds with hysteresis**: a track starts speaking when its smoothed level reaches
  `start_dbov` and stops only once it has stayed below the lower `stop_dbov` for `hold_ms`,
  so a talker's pauses between words do not make it flap;
- **orders**: the speaking tracks, loudest first, with their smoothed level (0..1 linear).

`SpeakerDetector` knows tracks only; grouping them by room and participant is the
service's (`forwarder.voice`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SILENCE_DBOV = 127
"""The quietest level the header extension can carry (-127 dBov)."""
DEFAULT_START_DBOV = 40
"""Speaking starts at a smoothed level of -40 dBov or louder (speech is about -20..-35)."""
DEFAULT_STOP_DBOV = 50
"""Speaking stops once the smoothed level stays below -50 dBov for `hold_ms`."""
DEFAULT_HOLD_MS = 600
DEFAULT_SMOOTHING = 0.5
"""Weight of the newest interval in the moving average (ticks every 250 ms: ~0.5 s)."""


def amplitude(level_dbov: int) -> float:
    """The linear amplitude (0..1] of an RFC 6464 level given in -dBov (0..127)."""
    return float(10.0 ** (-min(max(level_dbov, 0), SILENCE_DBOV) / 20.0))


def level_dbov(value: float) -> float:
    """The -dBov of a linear amplitude (the inverse of `amplitude`; 127 for silence)."""
    if value <= 0.0:
        return float(SILENCE_DBOV)
    return min(-20.0 * math.log10(value), float(SILENCE_DBOV))


@dataclass(frozen=True, slots=True)
class Speaking:
    """One speaking track and its smoothed level (linear amplitude, 0..1)."""

    track_id: str
    level: float


class _Track:
    __slots__ = ("count", "quiet_since", "smoothed", "speaking", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.smoothed = float(SILENCE_DBOV)
        """The moving average of the level in -dBov (lower is louder)."""
        self.speaking = False
        self.quiet_since: int | None = None


class SpeakerDetector:
    """Smoothed, thresholded speaking state of audio tracks (see the module docstring)."""

    def __init__(
        self,
        *,
        start_dbov: int = DEFAULT_START_DBOV,
        stop_dbov: int = DEFAULT_STOP_DBOV,
        hold_ms: int = DEFAULT_HOLD_MS,
        smoothing: float = DEFAULT_SMOOTHING,
    ) -> None:
        if not 0 <= start_dbov <= stop_dbov <= SILENCE_DBOV:
            raise ValueError("need 0 <= start_dbov <= stop_dbov <= 127 (-dBov: lower is louder)")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError("smoothing must be in (0, 1]")
        if hold_ms < 0:
            raise ValueError("hold_ms must not be negative")
        self._start = float(start_dbov)
        self._stop = float(stop_dbov)
        self._hold_ms = hold_ms
        self._alpha = smoothing
        self._tracks: dict[str, _Track] = {}

    def add(self, track_id: str) -> None:
        """Start following a track (silent until its levels say otherwise). Idempotent."""
        if track_id not in self._tracks:
            self._tracks[track_id] = _Track()

    def remove(self, track_id: str) -> None:
        """Forget a track (unpublished or muted): it is not speaking any more."""
        self._tracks.pop(track_id, None)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._tracks

    def observe(self, track_id: str, level: int) -> None:
        """One packet's level (-dBov, 0..127) for a followed track; others are ignored."""
        track = self._tracks.get(track_id)
        if track is not None:
            track.total += min(max(level, 0), SILENCE_DBOV)
            track.count += 1

    def tick(self, now_ms: int) -> list[Speaking]:
        """Fold the levels since the last tick in; the speaking tracks, loudest first."""
        alpha = self._alpha
        speaking: list[Speaking] = []
        for track_id, track in self._tracks.items():
            mean = track.total / track.count if track.count else float(SILENCE_DBOV)
            track.total, track.count = 0.0, 0
            track.smoothed = alpha * mean + (1.0 - alpha) * track.smoothed
            if track.smoothed <= self._start:
                track.speaking = True
                track.quiet_since = None
            elif track.speaking and track.smoothed > self._stop:
                if track.quiet_since is None:
                    track.quiet_since = now_ms
                if now_ms - track.quiet_since >= self._hold_ms:
                    track.speaking = False
                    track.quiet_since = None
            elif track.speaking:
                track.quiet_since = None  # between the thresholds: still talking
            if track.speaking:
                speaking.append(Speaking(track_id, amplitude(round(track.smoothed))))
        speaking.sort(key=lambda s: (-s.level, s.track_id))
        return speaking


__all__ = ["SILENCE_DBOV", "SpeakerDetector", "Speaking", "amplitude", "level_dbov"]
