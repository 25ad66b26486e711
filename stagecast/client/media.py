"""The seam where WebRTC media will plug into the client (not implemented yet).

Today `LocalParticipant.publish` only *announces* a track (`publish_track`): other clients
see `stream-published`, and `subscribe` records the intent on the server, but no RTP flows
and `stream-subscribed` is never emitted. A later issue brings a `MediaTransport` built on
aiortc (a publisher and a subscriber peer connection to the room's forwarder, negotiated
with the `offer` / `answer` / `candidate` frames); the room calls it at the points below.
"""

from __future__ import annotations

from typing import Any, Protocol

from schemas.client import SignalAnswer, SignalCandidate, SignalOffer
from schemas.models import TrackKind


class MediaTransport(Protocol):
    """What the room needs from a media implementation (one per room session)."""

    async def publish(self, track_sid: str, track: Any) -> None:
        """Start sending `track` (an aiortc `MediaStreamTrack`) as the announced `track_sid`."""

    async def unpublish(self, track_sid: str) -> None:
        """Stop sending the track announced as `track_sid`."""

    async def subscribe(self, participant_id: str, kind: TrackKind) -> None:
        """Prepare to receive `participant_id`'s `kind` track (after the server acked)."""

    async def unsubscribe(self, participant_id: str, kind: TrackKind) -> None:
        """Stop receiving `participant_id`'s `kind` track."""

    def on_signal(self, frame: SignalOffer | SignalAnswer | SignalCandidate) -> None:
        """A media signaling frame from the edge."""

    async def close(self) -> None:
        """Close every peer connection (no remote calls). Idempotent."""
