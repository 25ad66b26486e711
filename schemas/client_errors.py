"""Client-visible errors: one root class, one subclass per wire error code.

Every error the server sends arrives as a `StagecastError` carrying its code; each code in
`schemas.errors.ErrorCode` also has its own subclass, so callers can catch exactly the
condition they handle (`except stagecast.errors.RoomFull`). `ERRORS` is the one table from a
code to its class and `error_for` the one place a code is turned into an exception.

They live in `schemas` (beside the codes) so that the services and the shared tier raise
them without importing the SDK; `stagecast.errors` re-exports every name here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from schemas.errors import ErrorCode


class StagecastError(Exception):
    """Root of every error the SDK raises for a server- or protocol-level failure.

    `code` is the wire code (`"ROOM_FULL"`, ...), `message` the human-readable detail.
    `retry_after` is the server's hint, in seconds, of when to try again (0: none; set for
    `SERVER_BUSY`).
    """

    CODE: ClassVar[str] = ""
    retry_after: float = 0.0

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class _CodedError(StagecastError):
    """A `StagecastError` whose class fixes the code: constructed with a message only."""

    def __init__(self, message: str = "") -> None:
        super().__init__(self.CODE, message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


class InvalidToken(_CodedError):
    """The token is malformed, badly signed, or carries claims the server refuses."""

    CODE = ErrorCode.INVALID_TOKEN.value


class TokenExpired(_CodedError):
    """The token's `exp` has passed (beyond the allowed clock leeway)."""

    CODE = ErrorCode.TOKEN_EXPIRED.value


class InvalidPermissions(_CodedError):
    """The grant or the tier does not allow the action (e.g. a viewer publishing)."""

    CODE = ErrorCode.INVALID_PERMISSIONS.value


class NotPublished(_CodedError):
    """Subscribe to a kind the speaker has not published."""

    CODE = ErrorCode.NOT_PUBLISHED.value


class RoomFull(_CodedError):
    """The room reached its `max_participants`."""

    CODE = ErrorCode.ROOM_FULL.value


class RoomNotFound(_CodedError):
    """No room with that id exists."""

    CODE = ErrorCode.ROOM_NOT_FOUND.value


class ParticipantNotFound(_CodedError):
    """No participant with that id is in the room."""

    CODE = ErrorCode.PARTICIPANT_NOT_FOUND.value


class TrackNotFound(_CodedError):
    """No track with that sid is published."""

    CODE = ErrorCode.TRACK_NOT_FOUND.value


class DispatchNotFound(_CodedError):
    """The room has no agent job with that id (`delete_dispatch`)."""

    CODE = ErrorCode.DISPATCH_NOT_FOUND.value


class CursorExpired(_CodedError):
    """A `get_participants` cursor names a snapshot that is no longer kept."""

    CODE = ErrorCode.CURSOR_EXPIRED.value


class BadRequest(_CodedError):
    """A request was malformed or had an invalid field."""

    CODE = ErrorCode.BAD_REQUEST.value


class UnknownType(_CodedError):
    """A frame named a message type the peer does not know."""

    CODE = ErrorCode.UNKNOWN_TYPE.value


class PayloadTooLarge(_CodedError):
    """A payload, metadata, attributes or whole frame exceeded its size limit."""

    CODE = ErrorCode.PAYLOAD_TOO_LARGE.value


class RateLimited(_CodedError):
    """Too many requests; retry later."""

    CODE = ErrorCode.RATE_LIMITED.value


class NotJoined(_CodedError):
    """A room action was sent before the session joined."""

    CODE = ErrorCode.NOT_JOINED.value


class AlreadyJoined(_CodedError):
    """A second `join` was sent on a session that already joined."""

    CODE = ErrorCode.ALREADY_JOINED.value


class DuplicateIdentity(_CodedError):
    """Another session joined with the same participant id; this one was replaced."""

    CODE = ErrorCode.DUPLICATE_IDENTITY.value


class Removed(_CodedError):
    """The participant was removed by the server API or a moderator."""

    CODE = ErrorCode.REMOVED.value


class RoomDeleted(_CodedError):
    """The room was deleted while the participant was in it."""

    CODE = ErrorCode.ROOM_DELETED.value


class RoomClosed(_CodedError):
    """The room closed (e.g. it timed out)."""

    CODE = ErrorCode.ROOM_CLOSED.value


class ClientLeft(_CodedError):
    """The session ended because the client left."""

    CODE = ErrorCode.CLIENT_LEFT.value


class SlowConsumer(_CodedError):
    """The client could not keep up with the server's messages and was disconnected."""

    CODE = ErrorCode.SLOW_CONSUMER.value


class ServerShutdown(_CodedError):
    """The server is shutting down."""

    CODE = ErrorCode.SERVER_SHUTDOWN.value


class ResumeFailed(_CodedError):
    """A reconnect could not resume the session (grace over, or resume token refused)."""

    CODE = ErrorCode.RESUME_FAILED.value


class SessionLost(_CodedError):
    """The server ended the session while it was cut off (its grace ran out); the SDK joins
    again by itself (a full reconnect), so applications normally see `reconnecting` and
    `reconnected` instead of this."""

    CODE = ErrorCode.SESSION_LOST.value


class JoinTimeout(_CodedError):
    """The socket sent no join within the edge's join deadline."""

    CODE = ErrorCode.JOIN_TIMEOUT.value


class TooManyConnections(_CodedError):
    """The edge is at its connection cap (in all, or for this address): retry later or on
    another edge (the SDK does both by itself)."""

    CODE = ErrorCode.TOO_MANY_CONNECTIONS.value


class ServerBusy(_CodedError):
    """The edge has as many joins in flight as it takes: try again after `retry_after`
    seconds (the SDK does, with jitter, within its join retry window)."""

    CODE = ErrorCode.SERVER_BUSY.value


class Unavailable(_CodedError):
    """A service the request needs is not reachable right now."""

    CODE = ErrorCode.UNAVAILABLE.value


class Internal(_CodedError):
    """The server failed unexpectedly."""

    CODE = ErrorCode.INTERNAL.value


class InvalidStateError(_CodedError):
    """A call is illegal in the object's current lifecycle state (e.g. publish after leave).

    Raised locally by the SDK; never sent on the wire.
    """

    CODE = "INVALID_STATE"


ERRORS: dict[str, type[_CodedError]] = {
    cls.CODE: cls
    for cls in (
        InvalidToken,
        TokenExpired,
        InvalidPermissions,
        NotPublished,
        RoomFull,
        RoomNotFound,
        ParticipantNotFound,
        TrackNotFound,
        DispatchNotFound,
        CursorExpired,
        BadRequest,
        UnknownType,
        PayloadTooLarge,
        RateLimited,
        NotJoined,
        AlreadyJoined,
        DuplicateIdentity,
        Removed,
        RoomDeleted,
        RoomClosed,
        ClientLeft,
        SlowConsumer,
        ServerShutdown,
        ResumeFailed,
        SessionLost,
        JoinTimeout,
        TooManyConnections,
        ServerBusy,
        Unavailable,
        Internal,
        InvalidStateError,
    )
}
"""The one table from a code to its exception class."""


def error_for(code: str, message: str = "", retry_after_ms: int = 0) -> StagecastError:
    """The exception for a wire code: its subclass, or a plain `StagecastError` if unknown;
    `retry_after_ms` (the error frame's hint) becomes its `retry_after` in seconds."""
    cls = ERRORS.get(code)
    error = StagecastError(code, message) if cls is None else cls(message)
    if retry_after_ms > 0:
        error.retry_after = retry_after_ms / 1000
    return error
