"""Snapshots of the fold's state: rooms and revoked tokens as bytes, and back.

A room snapshot (format 2) is one msgpack array: the room's fields, its sessions as
`SessionRecord` rows (each an array of its fields), then its agent jobs if it has any,
encoded and decoded by msgspec in C: no Python code runs per session but the rebuilding of
the room's indexes on load. Format 1
(every session packed field by field in Python, ~10x slower both ways) is still read.
The cyclic garbage collector is paused while either runs: they build no cycles, and its
passes over a growing state cost more than the work itself.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack
import msgspec

from schemas.agents import AgentDispatch
from schemas.models import Grant, TrackInfo
from schemas.subjects import MAX_ROOM_ID_CHARS
from statekeeper.errors import SnapshotFormatUnknown
from statekeeper.state import (
    Room,
    SessionRecord,
    State,
    index_jobs,
    index_session,
    index_sessions,
)

SNAPSHOT_FORMAT = 2
"""What `pack_room` writes; `unpack_room` reads it and every format in `READABLE_FORMATS`."""
READABLE_FORMATS = (1, 2)
REVOCATIONS_FORMAT = 1


class _RoomRow(msgspec.Struct, array_like=True, gc=False):
    """A room snapshot, format 2 (its indexes are rebuilt on load)."""

    format: int
    id: str
    sid: str
    created_at: int
    metadata: str
    max_participants: int
    empty_timeout: int
    departure_timeout: int
    livestream: bool
    empty_since: int
    closes_at: int
    last_seq: int
    created_seq: int
    sessions: list[SessionRecord]


class _RoomRowWithJobs(_RoomRow, array_like=True, gc=False):
    """A room snapshot with agent jobs: one trailing field, so that a room without jobs is
    written exactly as before them, and rows from before them decode (with none)."""

    dispatches: list[AgentDispatch] = []


class _Format(msgspec.Struct, array_like=True):
    """The first element of any snapshot array: its format (the rest is skipped)."""

    format: int


_ENCODER = msgspec.msgpack.Encoder()
_ROOM_DECODER = msgspec.msgpack.Decoder(_RoomRowWithJobs)
_FORMAT_DECODER = msgspec.msgpack.Decoder(_Format)


def pack_room(room: Room) -> bytes:
    """Serialize a room for a snapshot (format 2).

    The sessions' cached wire views are left out: each is set aside for the encoding and
    put back after it, so the room is as it was (the encoder omits a trailing None)."""
    sessions = list(room.sessions.values())
    views = [s.info for s in sessions]
    with _collector_paused():
        try:
            for s in sessions:
                s.info = None
            jobs = list(room.dispatches.values())
            row = _RoomRowWithJobs if jobs else _RoomRow
            fields = () if not jobs else (jobs,)
            return _ENCODER.encode(
                row(
                    SNAPSHOT_FORMAT,
                    room.id,
                    room.sid,
                    room.created_at,
                    room.metadata,
                    room.max_participants,
                    room.empty_timeout,
                    room.departure_timeout,
                    room.livestream,
                    room.empty_since,
                    room.closes_at,
                    room.last_seq,
                    room.created_seq,
                    sessions,
                    *fields,
                )
            )
        finally:
            for s, view in zip(sessions, views, strict=True):
                s.info = view


def unpack_room(data: bytes) -> Room:
    """Rebuild a room from `pack_room` bytes of any readable format.

    Raises `SnapshotFormatUnknown` for bytes of a format this code does not read."""
    try:
        found = _FORMAT_DECODER.decode(data).format
    except msgspec.DecodeError as exc:
        raise SnapshotFormatUnknown(None, READABLE_FORMATS) from exc
    with _collector_paused():
        if found == 2:
            return _unpack_room_v2(data)
        if found == 1:
            return _unpack_room_v1(data)
    raise SnapshotFormatUnknown(found, READABLE_FORMATS)


def _unpack_room_v2(data: bytes) -> Room:
    row = _ROOM_DECODER.decode(data)
    room = Room(
        id=row.id,
        sid=row.sid,
        created_at=row.created_at,
        metadata=row.metadata,
        max_participants=row.max_participants,
        empty_timeout=row.empty_timeout,
        departure_timeout=row.departure_timeout,
        livestream=row.livestream,
        empty_since=row.empty_since,
        closes_at=row.closes_at,
        last_seq=row.last_seq,
        created_seq=row.created_seq,
        dispatches={job.id: job for job in row.dispatches},
    )
    index_sessions(room, row.sessions)
    return room


# --------------------------------------------------------------------------- format 1

_GRANT_FIELDS = tuple(f.name for f in msgspec.structs.fields(Grant))
_GRANTS: dict[int, Grant] = {}


def _unpack_grant(bits: int) -> Grant:
    grant = _GRANTS.get(bits)
    if grant is None:
        grant = Grant(**{name: bool(bits >> i & 1) for i, name in enumerate(_GRANT_FIELDS)})
        _GRANTS[bits] = grant
    return grant


_TRACK_DEFAULTS = TrackInfo(sid="", kind="audio")


def _unpack_track(v: list[Any]) -> TrackInfo:
    # Defaults left to the class, so that the track encodes as the fold's own would (a
    # field is omitted only when it holds the default object itself).
    source, name, muted = v[2], v[3], v[4]
    defaults = _TRACK_DEFAULTS
    return TrackInfo(
        sid=v[0],
        kind=v[1],
        source=defaults.source if source == defaults.source else source,
        name=defaults.name if name == defaults.name else name,
        muted=muted,
    )


def _unpack_session_v1(v: list[Any]) -> SessionRecord:
    return SessionRecord(
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        _GRANTS.get(v[5]) or _unpack_grant(v[5]),
        v[6],
        v[7],
        v[8],
        v[9],
        v[10],
        v[11],
        v[12],
        v[13],
        v[14],
        v[15],
        {t[0]: _unpack_track(t) for t in v[16]} if v[16] else {},
        tuple(sorted({(p, k) for p, k in v[17]})) if v[17] else (),
        v[18] if len(v) > 18 else "",  # snapshots from before media assignment
        v[19] if len(v) > 19 else 0,  # snapshots from before epochs: no token resumes it
    )


def _unpack_room_v1(data: bytes) -> Room:
    v = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    room = Room(
        id=v[1],
        sid=v[2],
        created_at=v[3],
        metadata=v[4],
        max_participants=v[5],
        empty_timeout=v[6],
        departure_timeout=v[7],
        livestream=v[8],
        empty_since=v[9],
        closes_at=v[10],
        last_seq=v[12],  # v[11] was the room's revocations: state-wide since
        created_seq=v[14] if len(v) > 14 else 0,  # snapshots from before room instances
    )
    for packed in v[13]:
        index_session(room, _unpack_session_v1(packed))
    return room


# --------------------------------------------------------------------------- revocations


def pack_revocations(revoked: Mapping[str, int]) -> bytes:
    """Serialize the revoked token ids (token id -> expiry) for a snapshot."""
    data: bytes = msgpack.packb([REVOCATIONS_FORMAT, sorted(revoked.items())], use_bin_type=True)
    return data


def unpack_revocations(data: bytes) -> dict[str, int]:
    """Rebuild the revoked token ids from `pack_revocations` bytes."""
    v = msgpack.unpackb(data, raw=False, use_list=True)
    if v[0] != REVOCATIONS_FORMAT:
        raise SnapshotFormatUnknown(v[0], (REVOCATIONS_FORMAT,), what="revocations")
    return {token_id: expires_at for token_id, expires_at in v[1]}


def revocations_key(partitions: tuple[int, ...]) -> str:
    """The snapshot key under which a statekeeper of `partitions` keeps its revocations.

    Longer than any room id may be, so it never names a room (and `restore` can tell).
    """
    label = "~revoked-tokens~" + ",".join(str(p) for p in partitions) + "~"
    return label.ljust(MAX_ROOM_ID_CHARS + 1, "~")


def restore(snapshots: Mapping[str, tuple[int, bytes]], partitions: tuple[int, ...]) -> State:
    """The state held by the snapshots a store loaded (rooms and revocations)."""
    state = State()
    key = revocations_key(partitions)
    for room_id, (_seq, blob) in snapshots.items():
        if room_id == key:
            state.revoked = unpack_revocations(blob)
        elif len(room_id) <= MAX_ROOM_ID_CHARS:  # longer: another statekeeper's
            state.rooms[room_id] = unpack_room(blob)
    index_jobs(state)
    return state


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a while (snapshots build no cycles)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def digest(state: State) -> str:
    """A hash of the whole state, equal for equal states (replay checks compare these)."""
    h = hashlib.sha256()
    for room_id in sorted(state.rooms):
        h.update(pack_room(state.rooms[room_id]))
    h.update(pack_revocations(state.revoked))
    return h.hexdigest()
