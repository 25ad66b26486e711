"""Room and session state, as the fold keeps it (its snapshots: `statekeeper.snapshots`).

Only `statekeeper.fold` mutates these objects. They are plain mutable slotted classes so
that one event costs O(1) work whatever the room's size; what leaves the statekeeper is
always a fresh frozen wire value (`participant_info`, `room_info`).
"""

from __future__ import annotations

import dataclasses

import msgspec

from schemas.agents import AgentDispatch
from schemas.models import (
    HAND_ATTRIBUTE,
    HAND_RAISED,
    Counts,
    Grant,
    ParticipantInfo,
    RoomInfo,
    TrackInfo,
)


class SessionRecord(msgspec.Struct, gc=False, array_like=True):
    """One participant session in a room.

    A msgspec Struct rather than a dataclass: built once per join in C, and left out of the
    garbage collector's passes (it never takes part in a reference cycle). Encoded as an
    array of its fields, it is also a snapshot's session row (`statekeeper.snapshots`,
    format 2, `info` written as nil): a new field goes at the end, with a default, so that
    older (shorter) rows still decode.
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
    """The wire view, cached; the fold resets it to None whenever the session changes
    (`view_changed`). Equality leaves it out."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not SessionRecord:
            return NotImplemented
        mine, theirs = msgspec.structs.astuple(self), msgspec.structs.astuple(other)
        return mine[:_INFO] + mine[_INFO + 1 :] == theirs[:_INFO] + theirs[_INFO + 1 :]


_INFO = SessionRecord.__struct_fields__.index("info")


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
    hands: dict[str, SessionRecord] = dataclasses.field(default_factory=dict)
    """Sessions with a hand up (attribute `hand` = `raised`) by sid, so a moderator who
    joins is told of them without a pass over the room (`hand_changed` keeps it)."""
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
    dispatches: dict[str, AgentDispatch] = dataclasses.field(default_factory=dict)
    """The room's agent jobs by id, in the order they were asked for (ended ones too, up
    to `statekeeper.fold.agents.MAX_DISPATCHES_PER_ROOM` in all)."""

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
    open_jobs: dict[str, str] = dataclasses.field(default_factory=dict)
    """Agent jobs not ended (pending or running), by id -> room id: what the dispatcher
    offers and watches without a pass over every room (`index_jobs` rebuilds it)."""


def index_jobs(state: State) -> None:
    """Rebuild `State.open_jobs` from the rooms (after a snapshot load)."""
    state.open_jobs = {
        job.id: room.id
        for room in state.rooms.values()
        for job in room.dispatches.values()
        if job.state != "ended"
    }


# --------------------------------------------------------------------------- room indexes


def index_session(room: Room, session: SessionRecord) -> None:
    """Put a session in the room and in every index and count the fold keeps of it.

    The fold's way in for a session (`index_sessions` builds the same for many)."""
    room.sessions[session.sid] = session
    room.by_identity[session.identity] = session.sid
    on_edge = room.by_edge.get(session.edge_id)
    if on_edge is None:
        on_edge = room.by_edge[session.edge_id] = set()
    on_edge.add(session.sid)
    tally(room, session, +1)
    if session.attributes:  # most sessions have none
        hand_changed(room, session)


def index_sessions(room: Room, sessions: list[SessionRecord]) -> None:
    """`index_session` for each of `sessions` in turn, into a room that has none yet: the
    same indexes and counts, built a dict at a time (the snapshot loader's way in)."""
    if room.sessions:
        raise ValueError(f"room {room.id!r} has sessions already")
    room.sessions = {s.sid: s for s in sessions}
    if len(room.sessions) != len(sessions):
        raise ValueError(f"room {room.id!r}: a sid appears twice")
    room.by_identity = {s.identity: s.sid for s in sessions}
    by_edge: dict[str, set[str]] = {}
    for s in sessions:
        on_edge = by_edge.get(s.edge_id)
        if on_edge is None:
            on_edge = by_edge[s.edge_id] = set()
        on_edge.add(s.sid)
    room.by_edge = by_edge
    room.speaker_sids = {s.sid: s for s in sessions if not s.is_viewer}
    room.speakers = len(room.speaker_sids)
    room.viewers = len(sessions) - room.speakers
    room.agents = sum(1 for s in sessions if s.kind == "agent")
    room.hands = {
        s.sid: s
        for s in sessions
        if s.attributes and s.attributes.get(HAND_ATTRIBUTE) == HAND_RAISED
    }
    room.speaker_views = None


def unindex_session(room: Room, session: SessionRecord) -> None:
    """Take a session out of the room, its indexes and its counts (`index_session` undone)."""
    del room.sessions[session.sid]
    if room.hands:
        room.hands.pop(session.sid, None)
    if room.by_identity.get(session.identity) == session.sid:
        del room.by_identity[session.identity]
    edge_sessions = room.by_edge.get(session.edge_id)
    if edge_sessions is not None:
        edge_sessions.discard(session.sid)
        if not edge_sessions:
            del room.by_edge[session.edge_id]
    tally(room, session, -1)


def hand_changed(room: Room, session: SessionRecord) -> bool:
    """Keep `room.hands` in step with the session's `hand` attribute; True if it is up."""
    if session.attributes.get(HAND_ATTRIBUTE) == HAND_RAISED:
        room.hands[session.sid] = session
        return True
    room.hands.pop(session.sid, None)
    return False


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
