"""Named errors of the forwarder; each carries its data and the client-visible code."""

from __future__ import annotations

from schemas.errors import ErrorCode


class ForwarderError(Exception):
    """Root of every error the forwarder raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class InvalidStateError(ForwarderError):
    """A call that the object's lifecycle state does not allow (e.g. after `close()`)."""

    def __init__(self, what: str, state: str) -> None:
        super().__init__(f"{what} is not allowed in state {state}")
        self.what = what
        self.state = state


class TrackNotFound(ForwarderError):
    """No published track with this id on this forwarder."""

    code = ErrorCode.TRACK_NOT_FOUND

    def __init__(self, track_id: str) -> None:
        super().__init__(f"no track {track_id!r}")
        self.track_id = track_id


class DuplicateTrack(ForwarderError):
    """A track id is published twice."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, track_id: str) -> None:
        super().__init__(f"track {track_id!r} is already published")
        self.track_id = track_id


class ParticipantNotFound(ForwarderError):
    """No publisher or subscriber session with this id on this forwarder."""

    code = ErrorCode.PARTICIPANT_NOT_FOUND

    def __init__(self, participant_id: str) -> None:
        super().__init__(f"no media session for {participant_id!r}")
        self.participant_id = participant_id


class DuplicateSession(ForwarderError):
    """A publisher or subscriber session with this id already exists."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, participant_id: str) -> None:
        super().__init__(f"a media session for {participant_id!r} already exists")
        self.participant_id = participant_id


class NoForwardableCodec(ForwarderError):
    """The offer has a media section with no codec the forwarder can pass through."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, kind: str, offered: list[str]) -> None:
        super().__init__(f"no forwardable {kind} codec in the offer (offered: {offered})")
        self.kind = kind
        self.offered = offered


class InvalidSdp(ForwarderError):
    """An SDP offer or answer aiortc could not apply."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"unusable {what}: {reason}")
        self.what = what
        self.reason = reason


class WrongMediaSections(ForwarderError):
    """A per-track offer must carry exactly one m-line, of the announced kind."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, kind: str, found: list[str]) -> None:
        super().__init__(f"the offer must carry exactly one {kind} m-line, found {found}")
        self.kind = kind
        self.found = found


class CodecChanged(ForwarderError):
    """A replacement offer cannot carry a published track in the codec its legs use."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, track_id: str, published: str, offered: list[str]) -> None:
        super().__init__(
            f"track {track_id!r} is forwarded as {published}; the new offer has {offered}"
        )
        self.track_id = track_id
        self.published = published
        self.offered = offered


class TracksChanged(ForwarderError):
    """A replacement offer does not carry exactly the tracks the publisher published."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, publisher_key: str, published: list[str], offered: list[str]) -> None:
        super().__init__(
            f"publisher {publisher_key!r} publishes {published}; the new offer carries {offered}"
        )
        self.publisher_key = publisher_key
        self.published = published
        self.offered = offered


class InvalidCandidate(ForwarderError):
    """A remote ICE candidate that does not parse or names no media section."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, candidate: str, reason: str) -> None:
        super().__init__(f"unusable ICE candidate {candidate[:80]!r}: {reason}")
        self.candidate = candidate
        self.reason = reason


class SubscriptionNotFound(ForwarderError):
    """The session has no subscriber leg for this track on this forwarder."""

    code = ErrorCode.TRACK_NOT_FOUND

    def __init__(self, sid: str, track_id: str) -> None:
        super().__init__(f"session {sid!r} has no subscription to {track_id!r} here")
        self.sid = sid
        self.track_id = track_id


class TrackRetired(ForwarderError):
    """An offer for a track its session has already unpublished."""

    code = ErrorCode.TRACK_NOT_FOUND

    def __init__(self, track_id: str) -> None:
        super().__init__(f"track {track_id!r} was unpublished")
        self.track_id = track_id


class SessionClosed(ForwarderError):
    """A request for a session whose media was closed on this forwarder."""

    code = ErrorCode.PARTICIPANT_NOT_FOUND

    def __init__(self, sid: str) -> None:
        super().__init__(f"the media of session {sid!r} is closed here")
        self.sid = sid


class Busy(ForwarderError):
    """Too many signaling requests in flight: the request is refused, not queued."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, limit: int) -> None:
        super().__init__(f"the forwarder has {limit} requests in flight; retry later")
        self.limit = limit


class BadLayer(ForwarderError):
    """A simulcast layer that is not one of the rids ``q``, ``h``, ``f`` (layers 0, 1, 2)."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, layer: str) -> None:
        super().__init__(f"no simulcast layer {layer!r} (expected rid q, h or f, or 0..2)")
        self.layer = layer


class BadQuality(ForwarderError):
    """A video quality that is not ``low``, ``medium`` or ``high``."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, quality: str) -> None:
        super().__init__(f"no video quality {quality!r} (expected low, medium or high)")
        self.quality = quality


class BadLayers(ForwarderError):
    """Announced simulcast layers that make no sense: a size or bitrate out of range, a
    rid twice, or a lower layer larger than a higher one (`why` says which)."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, why: str) -> None:
        super().__init__(f"simulcast layers: {why}")
        self.why = why
