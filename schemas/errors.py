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
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


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


class PayloadTooLarge(SchemaError):
    """A payload (data, metadata, attributes) is larger than its byte limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class FrameTooLarge(PayloadTooLarge):
    """The whole frame is larger than 1 MiB."""
