"""Named errors of the wire and the one table that maps them to client-visible codes."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every code a client can receive, in an `Error` frame or as a close reason."""

    INVALID_TOKEN = "INVALID_TOKEN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    INVALID_PERMISSIONS = "INVALID_PERMISSIONS"
    NOT_PUBLISHED = "NOT_PUBLISHED"
    ROOM_FULL = "ROOM_FULL"
    ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
    PARTICIPANT_NOT_FOUND = "PARTICIPANT_NOT_FOUND"
    TRACK_NOT_FOUND = "TRACK_NOT_FOUND"
    DISPATCH_NOT_FOUND = "DISPATCH_NOT_FOUND"
    CURSOR_EXPIRED = "CURSOR_EXPIRED"
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    NOT_JOINED = "NOT_JOINED"
    ALREADY_JOINED = "ALREADY_JOINED"
    DUPLICATE_IDENTITY = "DUPLICATE_IDENTITY"
    REMOVED = "REMOVED"
    ROOM_DELETED = "ROOM_DELETED"
    ROOM_CLOSED = "ROOM_CLOSED"
    CLIENT_LEFT = "CLIENT_LEFT"
    SLOW_CONSUMER = "SLOW_CONSUMER"
    SERVER_SHUTDOWN = "SERVER_SHUTDOWN"
    RESUME_FAILED = "RESUME_FAILED"
    SESSION_LOST = "SESSION_LOST"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    JOIN_TIMEOUT = "JOIN_TIMEOUT"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    SERVER_BUSY = "SERVER_BUSY"


class SchemaError(Exception):
    """Root of every error `decode` can raise on untrusted bytes."""

    code: ErrorCode = ErrorCode.BAD_REQUEST


class MalformedFrame(SchemaError):
    """The bytes are not a msgpack map with a type tag."""


class UnknownType(SchemaError):
    """The type tag names no message this peer knows."""

    code = ErrorCode.UNKNOWN_TYPE


class UnsupportedVersion(SchemaError):
    """The message is of a newer format version than this peer reads."""


class InvalidField(SchemaError):
    """A field is missing, of the wrong type, or out of range."""


class FieldTooLong(InvalidField):
    """A string field (identity, name, room id, ...) is longer than its limit."""


class ForbiddenCharacter(InvalidField):
    """A string holds a character no store can keep: NUL anywhere, or a control character
    (C0, DEL, C1) in an id. `field` is the path of the string, `char` the first offender."""

    def __init__(self, field: str, char: str) -> None:
        super().__init__(f"{field}: contains the forbidden character U+{ord(char):04X}")
        self.field = field
        self.char = char


class PayloadTooLarge(SchemaError):
    """A payload (data, metadata, attributes) is larger than its byte limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class FrameTooLarge(PayloadTooLarge):
    """The whole frame is larger than 1 MiB."""


CLOSE_CODES: dict[str, int] = {
    ErrorCode.INVALID_TOKEN.value: 4001,
    ErrorCode.TOKEN_EXPIRED.value: 4002,
    ErrorCode.RATE_LIMITED.value: 4008,
    ErrorCode.SLOW_CONSUMER.value: 4010,
    ErrorCode.DUPLICATE_IDENTITY.value: 4011,
    ErrorCode.REMOVED.value: 4012,
    ErrorCode.ROOM_DELETED.value: 4013,
    ErrorCode.ROOM_CLOSED.value: 4014,
    ErrorCode.ROOM_FULL.value: 4015,
    ErrorCode.RESUME_FAILED.value: 4016,
    ErrorCode.SERVER_SHUTDOWN.value: 4017,
    ErrorCode.SESSION_LOST.value: 4020,
    ErrorCode.JOIN_TIMEOUT.value: 4018,
    ErrorCode.TOO_MANY_CONNECTIONS.value: 4019,
    ErrorCode.CLIENT_LEFT.value: 1000,
}
"""The WebSocket close code for each way a session ends (docs/protocol.md), both ways."""

CLOSE_REASONS: dict[int, str] = {number: reason for reason, number in CLOSE_CODES.items()}
"""The reason a close code stands for (the inverse of `CLOSE_CODES`)."""
