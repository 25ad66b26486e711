"""Named errors of the forwarder; each carries its data and the client-visible code."""

from __future__ import annotations

from schemas.errors import ErrorCode


class ForwarderError(Exception):
    """Root of every error the forwarder raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class UnsupportedAiortc(ForwarderError):
    """The installed aiortc is not the version whose internals the adapter was written for."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(
            f"forwarder.aiortc_adapter needs aiortc=={expected} (it reaches into private "
            f"internals), found aiortc {found}; pin aiortc=={expected} or port the adapter"
        )
        self.found = found
        self.expected = expected


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
