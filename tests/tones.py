"""Audio tracks that talk: a tone an aiortc publisher sends with its RFC 6464 audio level."""

from __future__ import annotations

import math

from aiortc.mediastreams import AudioStreamTrack
from av.audio.frame import AudioFrame


class ToneTrack(AudioStreamTrack):
    """A 440 Hz tone at about -23 dBov while `loud`, silence otherwise (aiortc computes
    each frame's level and sends it in the audio level header extension)."""

    def __init__(self) -> None:
        super().__init__()
        self.loud = True

    async def recv(self) -> AudioFrame:
        frame = await super().recv()
        assert isinstance(frame, AudioFrame)
        if self.loud:
            rate, start = frame.sample_rate, frame.pts or 0
            samples = b"".join(
                int(3276 * math.sin(2 * math.pi * 440 * (start + k) / rate)).to_bytes(
                    2, "little", signed=True
                )
                for k in range(frame.samples)
            )
            frame.planes[0].update(samples)
        return frame
