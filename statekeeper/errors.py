"""Named errors of the statekeeper; each carries its data and the client-visible code."""

from __future__ import annotations

from schemas.errors import ErrorCode


class StatekeeperError(Exception):
    """Root of every error the statekeeper raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL


class CursorInvalid(StatekeeperError):
    """A pagination cursor is garbage, was altered, or names another room or tier."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid cursor: {reason}")
        self.reason = reason


class CursorExpired(StatekeeperError):
    """A genuine pagination cursor outlived its lifetime; the client starts a new walk."""

    code = ErrorCode.CURSOR_EXPIRED

    def __init__(self, issued_at_ms: int, lifetime_ms: int) -> None:
        super().__init__(f"cursor issued at {issued_at_ms} ms expired after {lifetime_ms} ms")
        self.issued_at_ms = issued_at_ms
        self.lifetime_ms = lifetime_ms


class CursorOfAnotherRoom(StatekeeperError):
    """A genuine cursor of an earlier room of the same id (deleted, then created again).

    The walk it pinned is over: the client starts a new one (`CURSOR_EXPIRED`).
    """

    code = ErrorCode.CURSOR_EXPIRED

    def __init__(self, room_id: str, cursor_room_sid: str, room_sid: str) -> None:
        super().__init__(
            f"cursor of room {room_id!r} instance {cursor_room_sid!r}, "
            f"which is now {room_sid!r}: start a new walk"
        )
        self.room_id = room_id
        self.cursor_room_sid = cursor_room_sid
        self.room_sid = room_sid


class StoreClosed(StatekeeperError):
    """The store was used after `close()` (the statekeeper's lifecycle is wrong)."""

    def __init__(self) -> None:
        super().__init__("the store is closed")


class SchemaVersionMismatch(StatekeeperError):
    """The database holds tables of a schema version this code does not know."""

    def __init__(self, found: int, expected: int) -> None:
        super().__init__(f"database schema version {found}, this statekeeper uses {expected}")
        self.found = found
        self.expected = expected


class MediaRefused(StatekeeperError):
    """A media request the room's state does not allow (no such session or track, or a
    participant that may not publish); `code` says which."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class NoForwarder(StatekeeperError):
    """No forwarder is heart-beating, so media cannot be placed anywhere."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("no media forwarder is running")


class LeaseLost(StatekeeperError):
    """A write for a partition whose lease this statekeeper no longer holds (lapsed,
    taken over or given back): nothing is written."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, partition: int, revision: int) -> None:
        super().__init__(f"the lease on partition {partition} (revision {revision}) is lost")
        self.partition = partition
        self.revision = revision


class FencedOut(StatekeeperError):
    """The database refused a write: a later holder of the partition's lease has written
    with a higher revision (this statekeeper is stale)."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, partition: int, revision: int) -> None:
        super().__init__(
            f"partition {partition}: a holder newer than revision {revision} owns the database rows"
        )
        self.partition = partition
        self.revision = revision


class SeveralNeedPostgres(StatekeeperError):
    """A second statekeeper on SQLite: several statekeepers must share PostgreSQL."""

    def __init__(self, members: int) -> None:
        super().__init__(
            f"{members} statekeepers are running, and this one stores on SQLite: several "
            "statekeepers must share one PostgreSQL database (--database-url postgresql://...)"
        )
        self.members = members


class LeasesRequired(StatekeeperError):
    """Another statekeeper runs on this NATS, and one of them folds without leases
    (``--leases off``): statekeepers sharing a room log must all lease its partitions."""

    def __init__(self, others: list[str]) -> None:
        super().__init__(
            f"another statekeeper ({', '.join(others)}) is running on this NATS and one of "
            "them runs without leases: statekeepers sharing a room log must all use "
            "--leases (and one PostgreSQL database)"
        )
        self.others = others


class PartitionsMismatch(StatekeeperError):
    """The room log was created with another number of partitions than asked for."""

    def __init__(self, stream: str, asked: int) -> None:
        super().__init__(
            f"the room log's stream has another partition count than --partitions {asked} "
            f"(its subject transform is {stream!r}); partitions are fixed when the stream "
            "is created"
        )
        self.stream = stream
        self.asked = asked


class SnapshotFormatUnknown(StatekeeperError, ValueError):
    """Snapshot bytes of a format this statekeeper cannot read (written by a newer one,
    say), or not a snapshot at all (`found` None). The log still holds the truth: drop the
    snapshot and its checkpoint to replay the room from the log."""

    def __init__(self, found: int | None, readable: tuple[int, ...], what: str = "room") -> None:
        shown = "unreadable bytes" if found is None else f"format {found}"
        super().__init__(f"{what} snapshot of {shown}; this statekeeper reads {readable}")
        self.found = found
        self.readable = readable
        self.what = what


class MetricsListenFailed(StatekeeperError):
    """`--metrics-port` could not be bound (in use, or an address this host lacks)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot serve /metrics on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason
