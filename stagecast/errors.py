"""Client-facing errors (re-exported): one root class, one subclass per wire error code.

The classes are defined in `schemas.client_errors`, next to the code table, so the services
raise the same classes without importing the SDK. Catch them from here
(`except stagecast.errors.RoomFull`); `error_for` turns a wire code into its exception.
"""

from __future__ import annotations

from schemas.client_errors import (
    ERRORS,
    AlreadyJoined,
    BadRequest,
    ClientLeft,
    CursorExpired,
    DispatchNotFound,
    DuplicateIdentity,
    Internal,
    InvalidPermissions,
    InvalidStateError,
    InvalidToken,
    JoinTimeout,
    NotJoined,
    NotPublished,
    ParticipantNotFound,
    PayloadTooLarge,
    RateLimited,
    Removed,
    ResumeFailed,
    RoomClosed,
    RoomDeleted,
    RoomFull,
    RoomNotFound,
    ServerBusy,
    ServerShutdown,
    SessionLost,
    SlowConsumer,
    StagecastError,
    TokenExpired,
    TooManyConnections,
    TrackNotFound,
    Unavailable,
    UnknownType,
    error_for,
)


class StreamError(StagecastError):
    """A text or byte stream failed; the reader raises it (never hangs).

    `stream_id` names the stream. Subclasses say why.
    """

    CODE = "STREAM_ERROR"

    def __init__(self, stream_id: str, message: str = "") -> None:
        super().__init__(self.CODE, message)
        self.stream_id = stream_id


class StreamCutOff(StreamError):
    """The stream ended before its trailer: the sender left, aborted it, or chunks were
    lost (the room's data budget dropped some)."""

    CODE = "STREAM_CUT_OFF"


class StreamBufferFull(StreamError):
    """The reader fell too far behind: more than its bounded buffer was waiting."""

    CODE = "STREAM_BUFFER_FULL"


class RpcError(Exception):
    """An RPC failed. `code` follows LiveKit's RPC codes (the class constants below);
    `message` says why, `data` is optional detail (a handler may raise `RpcError` itself to
    choose all three)."""

    APPLICATION_ERROR = 1500
    CONNECTION_TIMEOUT = 1501
    RESPONSE_TIMEOUT = 1502
    RECIPIENT_DISCONNECTED = 1503
    RESPONSE_PAYLOAD_TOO_LARGE = 1504
    SEND_FAILED = 1505
    UNSUPPORTED_METHOD = 1400
    RECIPIENT_NOT_FOUND = 1401
    REQUEST_PAYLOAD_TOO_LARGE = 1402
    UNSUPPORTED_SERVER = 1403
    UNSUPPORTED_VERSION = 1404

    def __init__(self, code: int, message: str = "", data: str = "") -> None:
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return (
            f"RPC error {self.code}: {self.message}" if self.message else f"RPC error {self.code}"
        )

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r}, {self.data!r})"


__all__ = [
    "ERRORS",
    "AlreadyJoined",
    "BadRequest",
    "ClientLeft",
    "CursorExpired",
    "DispatchNotFound",
    "DuplicateIdentity",
    "Internal",
    "InvalidPermissions",
    "InvalidStateError",
    "InvalidToken",
    "JoinTimeout",
    "NotJoined",
    "NotPublished",
    "ParticipantNotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Removed",
    "ResumeFailed",
    "RoomClosed",
    "RoomDeleted",
    "RoomFull",
    "RoomNotFound",
    "RpcError",
    "ServerBusy",
    "ServerShutdown",
    "SessionLost",
    "SlowConsumer",
    "StagecastError",
    "StreamBufferFull",
    "StreamCutOff",
    "StreamError",
    "TokenExpired",
    "TooManyConnections",
    "TrackNotFound",
    "Unavailable",
    "UnknownType",
    "error_for",
]
