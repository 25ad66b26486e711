"""Room and session state, as the fold keeps it, and its snapshot format.

Only `statekeeper.fold` mutates these objects. They are plain mutable slotted classes so
that one event costs O(1) work whatever the room's size; what leaves the statekeeper is
always a fresh frozen wire value (`participant_info`, `room_info`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack
import msgspec

from schemas.models import Counts, Grant, ParticipantInfo, RoomInfo, TrackInfo
from schemas.subjects import MAX_ROOM_ID_CHARS

SNAPSHOT_FORMAT = 1
REVOCATIONS_FORMAT = 1


class SessionRecord(msgspec.Struct, gc=False):
    """One participant session in a room.

    A msgspec Struct rather than a dataclass: built once per join in C, and left out of the
    garbage collector's passes (it never takes part in a reference cycle).
    """

    sid: str
    identity: str
    name: str
    is_viewer: bool
    kind: str
    grant: Grant
    metadata: str
    attributes: dict[str, str]
    joined_at: int
    since_seq: int
    """The log sequence at which the session entered its current tier (its roster key)."""
    edge_id: str
    token_id: str = ""
    """The `jti` of the participant token the session joined with."""
    token_expires_at: int = 0
    connected: bool = True
    disconnected_at: int = 0
    visible: bool = True
    """Broadcast to the room (always true outside livestream mode; speakers only)."""
    tracks: dict[str, TrackInfo] = msgspec.field(default_factory=dict)
    subscriptions: tuple[tuple[str, str], ...] = ()
    """Subscription intents: (publisher participant id, track kind), sorted. A tuple, not
    a set: most sessions have none, and an empty tuple is shared and outside the garbage
    collector's passes (a set per session was a tenth of the fold's time in them)."""
    forwarder: str = ""
    """The forwarder carrying this session's media ("" until its first media request)."""
    epoch: int = 0
    """The connection epoch: 1 at join, one more at each resume. A resume must name the
    current one, so each resume token works once."""
    info: ParticipantInfo | None = None
    """The wire view, cached; the fold resets it to None whenever the session changes.
    The last field: equality leaves it out."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not SessionRecord:
            return NotImplemented
        return msgspec.structs.astuple(self)[:-1] == msgspec.structs.astuple(other)[:-1]


@dataclasses.dataclass(slots=True)
class Room:
    """A room: options, sessions and the indexes the fold needs for O(1) decisions."""

    id: str
    sid: str
    created_at: int
    metadata: str = ""
    max_participants: int = 0
    empty_timeout: int = 300
    departure_timeout: int = 20
    livestream: bool = False
    sessions: dict[str, SessionRecord] = dataclasses.field(default_factory=dict)
    by_identity: dict[str, str] = dataclasses.field(default_factory=dict)
    by_edge: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    speaker_sids: dict[str, SessionRecord] = dataclasses.field(default_factory=dict)
    """Speaker-tier sessions by sid, in the order they entered the tier."""
    speaker_views: tuple[ParticipantInfo, ...] | None = dataclasses.field(
        default=None, compare=False
    )
    """The wire views of the visible speakers, in `speaker_sids` order, cached for join
    replies (`visible_speakers`); None when a speaker changed since (`view_changed`)."""
    speakers: int = 0
    viewers: int = 0
    agents: int = 0
    empty_since: int = 0
    """When the room last became empty (0 while anyone is in it)."""
    closes_at: int = 0
    """When the room closes if it stays empty (its armed timeout)."""
    last_seq: int = 0
    created_seq: int = 0
    """The log sequence that opened this room instance: older roster rows of the id are an
    earlier instance's (0 in snapshots from before it was recorded)."""

    def counts(self) -> Counts:
        return Counts(
            speaker=self.speakers, viewer=self.viewers, total=self.speakers + self.viewers
        )

    def session_by_identity(self, identity: str) -> SessionRecord | None:
        sid = self.by_identity.get(identity)
        return None if sid is None else self.sessions[sid]


@dataclasses.dataclass(slots=True)
class State:
    """Everything the statekeeper knows: the rooms of its partitions and revoked tokens."""

    rooms: dict[str, Room] = dataclasses.field(default_factory=dict)
    revoked: dict[str, int] = dataclasses.field(default_factory=dict)
    """Token ids (`jti`) of removed participants -> when the token expires (ms; 0 unknown).

    State-wide, not per room: a removal refuses the token in every room, and outlives the
    room it happened in, until the token's own expiry."""


# --------------------------------------------------------------------------- room indexes


def index_session(room: Room, session: SessionRecord) -> None:
    """Put a session in the room and in every index and count the fold keeps of it.

    The fold's way in for a session, and the snapshot loader's: both build the same."""
    room.sessions[session.sid] = session
    room.by_identity[session.identity] = session.sid
    on_edge = room.by_edge.get(session.edge_id)
    if on_edge is None:
        on_edge = room.by_edge[session.edge_id] = set()
    on_edge.add(session.sid)
    tally(room, session, +1)


def unindex_session(room: Room, session: SessionRecord) -> None:
    """Take a session out of the room, its indexes and its counts (`index_session` undone)."""
    del room.sessions[session.sid]
    if room.by_identity.get(session.identity) == session.sid:
        del room.by_identity[session.identity]
    edge_sessions = room.by_edge.get(session.edge_id)
    if edge_sessions is not None:
        edge_sessions.discard(session.sid)
        if not edge_sessions:
            del room.by_edge[session.edge_id]
    tally(room, session, -1)


def tally(room: Room, session: SessionRecord, delta: int) -> None:
    """Count a session in (`delta` +1) or out (-1) of its tier and kind."""
    if session.is_viewer:
        room.viewers += delta
    else:
        room.speakers += delta
        if delta > 0:
            room.speaker_sids[session.sid] = session
        else:
            room.speaker_sids.pop(session.sid, None)
        room.speaker_views = None
    if session.kind == "agent":
        room.agents += delta


def view_changed(room: Room, session: SessionRecord) -> None:
    """The session's wire view may have changed (name, metadata, attributes, tracks,
    visibility): drop what was cached of it. Every such change goes through here."""
    session.info = None
    if not session.is_viewer:
        room.speaker_views = None


def visible_speakers(room: Room) -> tuple[ParticipantInfo, ...]:
    """The wire views of the room's visible speakers, in the order they went on stage.

    Cached per room until a speaker's view changes (`view_changed`) or the speaker tier
    does (`tally`): a join reply carries them, and most joins change neither."""
    views = room.speaker_views
    if views is None:
        views = room.speaker_views = tuple(
            [
                speaker.info or participant_info(speaker)  # the cached view, without a call
                for speaker in room.speaker_sids.values()
                if speaker.visible
            ]
        )
    return views


def subscribe(session: SessionRecord, key: tuple[str, str]) -> None:
    """Add a subscription intent (publisher participant id, kind), keeping them sorted."""
    if key not in session.subscriptions:
        session.subscriptions = tuple(sorted((*session.subscriptions, key)))


def unsubscribe(session: SessionRecord, key: tuple[str, str]) -> None:
    """Drop a subscription intent, if the session has it."""
    if key in session.subscriptions:
        session.subscriptions = tuple(k for k in session.subscriptions if k != key)


def participant_info(session: SessionRecord) -> ParticipantInfo:
    """The wire view of a session (a copy: later changes to the session do not show)."""
    if session.info is None:
        session.info = _build_info(session)
    return session.info


def _build_info(session: SessionRecord) -> ParticipantInfo:
    attributes, tracks = session.attributes, session.tracks
    return ParticipantInfo(
        sid=session.sid,
        id=session.identity,
        name=session.name,
        is_viewer=session.is_viewer,
        kind=session.kind,  # type: ignore[arg-type]
        metadata=session.metadata,
        attributes=dict(attributes) if attributes else {},  # most viewers have neither
        tracks=tuple(tracks.values()) if tracks else (),
        joined_at=session.joined_at,
    )


def room_info(room: Room) -> RoomInfo:
    """The wire view of a room."""
    return RoomInfo(
        id=room.id,
        sid=room.sid,
        metadata=room.metadata,
        max_participants=room.max_participants,
        empty_timeout=room.empty_timeout,
        departure_timeout=room.departure_timeout,
        livestream=room.livestream,
        created_at=room.created_at,
        counts=room.counts(),
    )


# --------------------------------------------------------------------------- snapshots

_GRANT_FIELDS = tuple(f.name for f in msgspec.structs.fields(Grant))


_GRANT_BITS: dict[Grant, int] = {}
_GRANTS: dict[int, Grant] = {}


def _pack_grant(grant: Grant) -> int:
    bits = _GRANT_BITS.get(grant)
    if bits is None:
        bits = sum(1 << i for i, name in enumerate(_GRANT_FIELDS) if getattr(grant, name))
        if len(_GRANT_BITS) < 256:  # there are 256 grants at most
            _GRANT_BITS[grant] = bits
    return bits


def _unpack_grant(bits: int) -> Grant:
    grant = _GRANTS.get(bits)
    if grant is None:
        grant = Grant(**{name: bool(bits >> i & 1) for i, name in enumerate(_GRANT_FIELDS)})
        _GRANTS[bits] = grant
    return grant


def _pack_track(t: TrackInfo) -> list[Any]:
    return [t.sid, t.kind, t.source, t.name, t.muted]


def _unpack_track(v: list[Any]) -> TrackInfo:
    return TrackInfo(sid=v[0], kind=v[1], source=v[2], name=v[3], muted=v[4])


def _pack_session(s: SessionRecord) -> list[Any]:
    return [
        s.sid,
        s.identity,
        s.name,
        s.is_viewer,
        s.kind,
        _pack_grant(s.grant),
        s.metadata,
        s.attributes,
        s.joined_at,
        s.since_seq,
        s.edge_id,
        s.token_id,
        s.token_expires_at,
        s.connected,
        s.disconnected_at,
        s.visible,
        [_pack_track(t) for t in s.tracks.values()],
        s.subscriptions,
        s.forwarder,
        s.epoch,
    ]


def _unpack_session(v: list[Any]) -> SessionRecord:
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
        tuple([(p, k) for p, k in v[17]]) if v[17] else (),
        v[18] if len(v) > 18 else "",  # snapshots from before media assignment
        v[19] if len(v) > 19 else 0,  # snapshots from before epochs: no token resumes it
    )


def pack_room(room: Room) -> bytes:
    """Serialize a room for a snapshot (its indexes are rebuilt on load).

    With the cyclic GC paused (see `restore`): its passes doubled the cost."""
    with _collector_paused():
        return _pack_room(room)


def _pack_room(room: Room) -> bytes:
    body = [
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
        {},  # was the room's revocations; they are state-wide now (`pack_revocations`)
        room.last_seq,
        [_pack_session(s) for s in room.sessions.values()],
        room.created_seq,
    ]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def unpack_room(data: bytes) -> Room:
    """Rebuild a room from `pack_room` bytes."""
    v = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    if v[0] != SNAPSHOT_FORMAT:
        raise ValueError(f"snapshot format {v[0]} is not {SNAPSHOT_FORMAT}")
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
        last_seq=v[12],
        created_seq=v[14] if len(v) > 14 else 0,  # snapshots from before room instances
    )
    for packed in v[13]:
        index_session(room, _unpack_session(packed))
    return room


def pack_revocations(revoked: Mapping[str, int]) -> bytes:
    """Serialize the revoked token ids (token id -> expiry) for a snapshot."""
    data: bytes = msgpack.packb([REVOCATIONS_FORMAT, sorted(revoked.items())], use_bin_type=True)
    return data


def unpack_revocations(data: bytes) -> dict[str, int]:
    """Rebuild the revoked token ids from `pack_revocations` bytes."""
    v = msgpack.unpackb(data, raw=False, use_list=True)
    if v[0] != REVOCATIONS_FORMAT:
        raise ValueError(f"revocations format {v[0]} is not {REVOCATIONS_FORMAT}")
    return {token_id: expires_at for token_id, expires_at in v[1]}


def revocations_key(partitions: tuple[int, ...]) -> str:
    """The snapshot key under which a statekeeper of `partitions` keeps its revocations.

    Longer than any room id may be, so it never names a room (and `restore` can tell).
    """
    label = "~revoked-tokens~" + ",".join(str(p) for p in partitions) + "~"
    return label.ljust(MAX_ROOM_ID_CHARS + 1, "~")


def restore(snapshots: Mapping[str, tuple[int, bytes]], partitions: tuple[int, ...]) -> State:
    """The state held by the snapshots a store loaded (rooms and revocations).

    The cyclic garbage collector is paused meanwhile: unpacking builds a few objects per
    session and no cycle, and a collection every 700 of them over the growing state cost
    four times the unpacking itself (100,000 sessions: 0.65 s against 0.15 s)."""
    state = State()
    key = revocations_key(partitions)
    with _collector_paused():
        for room_id, (_seq, blob) in snapshots.items():
            if room_id == key:
                state.revoked = unpack_revocations(blob)
            elif len(room_id) <= MAX_ROOM_ID_CHARS:  # longer: another statekeeper's
                state.rooms[room_id] = unpack_room(blob)
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
