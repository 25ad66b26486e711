"""Persistence hygiene: refused items set aside, outages retried quietly with backoff.

The statekeeper writes each batch (public events, then roster rows, snapshots, deletions
and the checkpoint) whole. When a batch fails, `is_refusal` tells the two failures apart:

* an **outage** (connection refused, timeouts, a missing stream, a locked database): the
  batch is kept and retried with capped exponential backoff (`PersistenceHealth`); one
  WARNING line when persisting starts failing, one INFO line when it is back;
* a **refusal** (the store or the events stream will never take this data: a string
  PostgreSQL cannot hold, an integer out of range, a subject no room token makes): the
  batch is bisected (`isolate`) down to the items refused, which are set aside as
  `PoisonedItem` records (logged once per room, counted, kept in memory and in the store)
  while everything else is written and the checkpoint moves on.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import nats.errors
import nats.js.errors
import sqlalchemy.exc

from schemas.codec import encode, pack_struct
from schemas.errors import SchemaError
from statekeeper.outcomes import PublicEvent, RosterJoin, RosterLeave, RosterUpdate

log = logging.getLogger("stagecast.statekeeper.persistence")

FIRST_RETRY_S = 0.1
MAX_RETRY_S = 5.0
RECENT_POISONED = 100
"""How many set-aside items `PersistenceHealth.recent` keeps (the oldest go first)."""
_LOGGED_ROOMS = 10_000
_ERROR_CHARS = 1_000

_REFUSED_SQLSTATE_CLASSES = ("22", "23")  # data exception, integrity constraint violation


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """A room snapshot waiting to be written: the room's state blob at `seq`."""

    room_id: str
    seq: int
    blob: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Deletion:
    """A deleted room's rows and snapshot (up to `seq`) waiting to be dropped."""

    room_id: str
    seq: int


Item = PublicEvent | RosterJoin | RosterLeave | RosterUpdate | Snapshot | Deletion
"""One thing a batch writes; `isolate` sets aside single items."""
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class PoisonedItem:
    """An item a store or the events stream refused, set aside with its error.

    `room` and `error` are ASCII (`ascii()` escapes), so the record itself can be stored
    anywhere; `detail` is the item's wire bytes (participant, event or snapshot) when it
    could be encoded, else empty.
    """

    room: str
    kind: str
    seq: int
    """The log sequence the batch was cut at (the item's event is at or before it)."""
    error: str
    at_ms: int
    detail: bytes = b""

    @classmethod
    def of(cls, item: Item, error: BaseException, seq: int, at_ms: int) -> PoisonedItem:
        """The record of `item`, refused with `error` in a batch cut at `seq`."""
        message = ascii(describe(error))[1:-1][:_ERROR_CHARS]
        return cls(ascii(item.room_id)[1:-1], kind_of(item), seq, message, at_ms, _detail(item))


def describe(error: BaseException) -> str:
    """One line naming an error: the driver's own error for a database one (not the SQL
    and parameters SQLAlchemy adds, which would repeat the refused data)."""
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.orig is not None:
        inner: BaseException = error.orig.__cause__ or error.orig
    else:
        inner = error
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0]}" if text else type(inner).__name__


def kind_of(item: Item) -> str:
    """What an item is, for records and logs: ``roster_join``, ``public_event:<name>``..."""
    if isinstance(item, PublicEvent):
        return f"public_event:{item.name}"
    return {
        RosterJoin: "roster_join",
        RosterLeave: "roster_leave",
        RosterUpdate: "roster_update",
        Snapshot: "snapshot",
        Deletion: "room_deleted",
    }[type(item)]


def _detail(item: Item) -> bytes:
    try:
        if isinstance(item, PublicEvent):
            return encode(item.message)
        if isinstance(item, (RosterJoin, RosterUpdate)):
            return pack_struct(item.participant)
        if isinstance(item, Snapshot):
            return item.blob
    except Exception:  # the item may be refused because it cannot be encoded
        return b""
    return b""


def is_refusal(exc: BaseException) -> bool:
    """True when `exc` says the data itself can never be written (retrying cannot help);
    False for an outage, or anything unknown (kept and retried, never dropped)."""
    if isinstance(exc, (SchemaError, ValueError, OverflowError)):
        return True  # bad strings, subjects no room token makes, ints no driver binds
    # Not TypeError: that is a bug in this code, and setting a batch aside would lose it.
    if isinstance(exc, (nats.errors.MaxPayloadError, nats.js.errors.BadRequestError)):
        return True
    if isinstance(exc, (sqlalchemy.exc.DataError, sqlalchemy.exc.IntegrityError)):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate[:2] in _REFUSED_SQLSTATE_CLASSES
    return False


async def isolate(
    items: Sequence[T], write: Callable[[Sequence[T]], Awaitable[None]]
) -> list[tuple[T, Exception]]:
    """Write `items` (a batch `write` refused whole) in order, bisecting every refused
    chunk down to single items; return the refused items with their errors.

    An outage (an error `is_refusal` does not accept) is raised as it is: the caller keeps
    the batch. `write` must be idempotent (a chunk may be written again after a crash).
    """
    refused: list[tuple[T, Exception]] = []

    async def attempt(chunk: Sequence[T]) -> None:
        try:
            await write(chunk)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            if len(chunk) == 1:
                refused.append((chunk[0], exc))
                return
            await split(chunk)

    async def split(chunk: Sequence[T]) -> None:
        middle = len(chunk) // 2
        await attempt(chunk[:middle])
        await attempt(chunk[middle:])

    if len(items) == 1:
        await attempt(items)
    elif items:
        await split(items)
    return refused


class PersistenceHealth:
    """Whether persisting works, its counters, and the items set aside.

    `failed` and `succeeded` are called after every attempt; only the changes of state are
    logged. Counters: `persist_failures_total` (failed attempts), `poisoned_events_total`
    (items set aside), `poisoned_rooms_total` (rooms that had an item set aside),
    `persistence_state` (0 ok, 1 retrying).
    """

    def __init__(self) -> None:
        self.persist_failures_total = 0
        self.poisoned_events_total = 0
        self.poisoned_rooms_total = 0
        self.recent: collections.deque[PoisonedItem] = collections.deque(maxlen=RECENT_POISONED)
        """The last set-aside items (the store keeps every one: `Store.poisoned`)."""
        self._failing_since: float | None = None
        self._attempts = 0
        self._logged_rooms: set[str] = set()

    @property
    def persistence_state(self) -> int:
        """0 while persisting works, 1 while it fails and is retried."""
        return 0 if self._failing_since is None else 1

    def failed(self, error: BaseException, now: float) -> float:
        """Count a failed attempt at monotonic time `now`; the seconds to wait before the
        next one (100 ms doubling up to 5 s)."""
        self.persist_failures_total += 1
        self._attempts += 1
        if self._failing_since is None:
            self._failing_since = now
            log.warning(
                "persisting failed; retrying with backoff until it is back: %s",
                describe(error),
                exc_info=error,  # once per outage: where it failed, if it is a bug
            )
        return float(min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (self._attempts - 1)))

    def succeeded(self, now: float) -> None:
        """A write went through at monotonic time `now`: log the recovery, if it is one."""
        if self._failing_since is not None:
            log.info(
                "persisting is back after %.1f s and %d failed attempts",
                now - self._failing_since,
                self._attempts,
            )
        self._failing_since = None
        self._attempts = 0

    def set_aside(self, records: Sequence[PoisonedItem]) -> None:
        """Count and keep refused items; log each room the first time it has one."""
        self.poisoned_events_total += len(records)
        self.recent.extend(records)
        by_room = collections.Counter(record.room for record in records)
        for room, count in sorted(by_room.items()):
            first = next(r for r in records if r.room == room)
            if room in self._logged_rooms:
                log.debug("room %s: %d more items refused and set aside", room, count)
                continue
            if len(self._logged_rooms) >= _LOGGED_ROOMS:
                self._logged_rooms.clear()
            self._logged_rooms.add(room)
            self.poisoned_rooms_total += 1
            log.error(
                "room %s: persistence failed for %d items (first %s at seq %d: %s); "
                "they are set aside, every other room keeps persisting",
                room,
                count,
                first.kind,
                first.seq,
                first.error,
            )


__all__ = [
    "Deletion",
    "Item",
    "PersistenceHealth",
    "PoisonedItem",
    "Snapshot",
    "describe",
    "is_refusal",
    "isolate",
    "kind_of",
]
