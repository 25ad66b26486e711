"""The fold: `apply(state, seq, event) -> outcomes`, the statekeeper's every decision.

Deterministic and pure apart from updating `state` in place: no IO, no clock, no ids made
here (they arrive on the event; the one derived id, an auto-created room's sid, comes from
the log sequence). Each event costs O(1) work in the room's size, except the few that by
their nature touch every session (deleting a room, losing an edge). Replaying the same log
gives the same state and the same outcomes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from schemas import subjects
from schemas.api import OkReply, ParticipantReply, RoomReply
from schemas.client import (
    Ack,
    Disconnect,
    Error,
    HandChanged,
    JoinAccepted,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomUpdated,
    TierChanged,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
    ViewerUpdated,
)
from schemas.codec import Message
from schemas.errors import ErrorCode
from schemas.events import (
    ParticipantJoinedEvent,
    ParticipantLeftEvent,
    RoomFinished,
    RoomStarted,
    TrackPublishedEvent,
    TrackUnpublishedEvent,
)
from schemas.log import (
    ACTION_DEADLINE_MS,
    AttributesSet,
    EdgeLost,
    ForwarderAssigned,
    GraceExpired,
    JoinRequested,
    LeaveRequested,
    LogEvent,
    MetadataSet,
    ParticipantRemoveRequested,
    ParticipantUpdateRequested,
    ResumeRequested,
    RoomCreateRequested,
    RoomDeleteRequested,
    RoomMetadataSet,
    RoomTimedOut,
    SessionDisconnected,
    SessionsAlive,
    SubscriptionRequested,
    TrackMuteForced,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.models import HAND_ATTRIBUTE, HAND_RAISED, Grant, TrackInfo
from statekeeper.outcomes import (
    Broadcast,
    CountsMoved,
    Direct,
    MediaChanged,
    Outcome,
    PublicEvent,
    RevocationsChanged,
    RoomEnded,
    RosterJoin,
    RosterLeave,
    RosterUpdate,
    TimerDue,
)
from statekeeper.state import Room, SessionRecord, State, participant_info, room_info

REVOKED_MESSAGE = "this token was removed from a room; ask for a new one"
REVOKED_KEPT_MS = 60_000
"""How long past its token's expiry a revocation is kept (beyond any tolerated clock skew)."""

E = TypeVar("E", bound=LogEvent)
Handler = Callable[[State, int, Any, list[Outcome]], None]
_HANDLERS: dict[type[LogEvent], Handler] = {}


def apply(state: State, seq: int, event: LogEvent, stored_at: int = 0) -> list[Outcome]:
    """Fold one room-log event (at stream sequence `seq`) into `state`; return outcomes.

    `stored_at` is when JetStream stored the event (ms; 0: unknown). An action stored more
    than `ACTION_DEADLINE_MS` after its `at` is answered `UNAVAILABLE` and not applied: its
    edge has told the client it failed (a publish buffered through a NATS reconnect, say).
    """
    out: list[Outcome] = []
    handler = _HANDLERS.get(type(event))
    if handler is not None and event.reply_to and stored_at - event.at > ACTION_DEADLINE_MS:
        late = stored_at - event.at
        _error(event, ErrorCode.UNAVAILABLE, f"the action reached the room log {late} ms late", out)
    elif handler is not None:
        handler(state, seq, event, out)
        room = state.rooms.get(event.room_id)
        if room is not None:
            room.last_seq = seq
    return out


def handles(cls: type[E]) -> Callable[[Callable[[State, int, E, list[Outcome]], None]], Handler]:
    def register(fn: Callable[[State, int, E, list[Outcome]], None]) -> Handler:
        _HANDLERS[cls] = fn
        return fn

    return register


# --------------------------------------------------------------------------- replies


def _reply(event: LogEvent, message: Message, out: list[Outcome]) -> None:
    if event.reply_to:
        out.append(Direct(event.reply_to, message))


def _ack(event: LogEvent, out: list[Outcome], sid: str | None = None) -> None:
    _reply(event, Ack(id=event.req, sid=sid), out)


def _error(event: LogEvent, code: ErrorCode, message: str, out: list[Outcome]) -> None:
    _reply(event, Error(id=event.req, code=code.value, message=message), out)


def session_subject(session: SessionRecord) -> str:
    """Where the fold sends a session's direct frames (ids checked when they entered)."""
    return subjects.session(session.edge_id, session.sid)


def _session(state: State, event: Any, out: list[Outcome]) -> tuple[Room, SessionRecord] | None:
    """The room and session an action names, or an error reply and None."""
    room = state.rooms.get(event.room_id)
    session = room.sessions.get(event.sid) if room is not None else None
    if room is None or session is None:
        _error(event, ErrorCode.NOT_JOINED, "the session is not in the room", out)
        return None
    return room, session


def _participant(state: State, event: Any, out: list[Outcome]) -> tuple[Room, SessionRecord] | None:
    """The room and session an admin action names by participant id, or an error reply."""
    room = state.rooms.get(event.room_id)
    if room is None:
        _error(event, ErrorCode.ROOM_NOT_FOUND, f"no room {event.room_id!r}", out)
        return None
    session = room.session_by_identity(event.participant_id)
    if session is None:
        _error(event, ErrorCode.PARTICIPANT_NOT_FOUND, f"no {event.participant_id!r}", out)
        return None
    return room, session


# --------------------------------------------------------------------------- room lifecycle


def _open_room(state: State, seq: int, event: LogEvent, room_sid: str, out: list[Outcome]) -> Room:
    room = Room(
        id=event.room_id,
        sid=room_sid,
        created_at=event.at,
        empty_since=event.at,
        created_seq=seq,
    )
    state.rooms[room.id] = room
    out.append(
        PublicEvent(
            room.id, "room_started", RoomStarted(id=f"{seq}.rs", at=event.at, room=room_info(room))
        )
    )
    return room


def _arm_room_timeout(room: Room, at: int, timeout_s: int, out: list[Outcome]) -> None:
    room.empty_since = at
    room.closes_at = at + timeout_s * 1000
    due = RoomTimedOut(room_id=room.id, at=at + timeout_s * 1000, room_sid=room.sid, empty_since=at)
    out.append(TimerDue(due))


def _close_room(
    state: State, seq: int, room: Room, at: int, reason: str, out: list[Outcome]
) -> None:
    del state.rooms[room.id]
    finished = RoomFinished(id=f"{seq}.rf", at=at, room=room_info(room), reason=reason)
    out.append(PublicEvent(room.id, "room_finished", finished))
    out.append(RoomEnded(room.id))


@handles(RoomCreateRequested)
def _create_room(state: State, seq: int, event: RoomCreateRequested, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    if room is None:
        room = _open_room(state, seq, event, event.room_sid, out)
        room.max_participants = max(0, event.max_participants)
        room.empty_timeout = max(0, event.empty_timeout)
        room.departure_timeout = max(0, event.departure_timeout)
        room.metadata = event.metadata
        room.livestream = event.livestream
        _arm_room_timeout(room, event.at, room.empty_timeout, out)
    _reply(event, RoomReply(room=room_info(room)), out)


@handles(RoomDeleteRequested)
def _delete_room(state: State, seq: int, event: RoomDeleteRequested, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    if room is None:
        _error(event, ErrorCode.ROOM_NOT_FOUND, f"no room {event.room_id!r}", out)
        return
    # One broadcast closes every socket of the room, on every edge, whatever its tier.
    out.append(Broadcast(room.id, "speakers", Disconnect(reason=ErrorCode.ROOM_DELETED.value)))
    _close_room(state, seq, room, event.at, ErrorCode.ROOM_DELETED.value, out)
    _reply(event, OkReply(), out)


@handles(RoomMetadataSet)
def _room_metadata(state: State, seq: int, event: RoomMetadataSet, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    if room is None:
        _error(event, ErrorCode.ROOM_NOT_FOUND, f"no room {event.room_id!r}", out)
        return
    room.metadata = event.metadata
    info = room_info(room)
    out.append(Broadcast(room.id, "speakers", RoomUpdated(seq=seq, room=info)))
    _reply(event, RoomReply(room=info), out)


@handles(RoomTimedOut)
def _room_timeout(state: State, seq: int, event: RoomTimedOut, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    if room is None or room.sid != event.room_sid or room.sessions:
        return
    if room.empty_since != event.empty_since:
        return  # someone came and went since this timer was armed; a newer one is due
    _close_room(state, seq, room, event.at, ErrorCode.ROOM_CLOSED.value, out)


# --------------------------------------------------------------------------- sessions


def _enter(room: Room, session: SessionRecord, seq: int, at: int, out: list[Outcome]) -> None:
    """Add a session to the room's indexes and announce it."""
    room.sessions[session.sid] = session
    room.by_identity[session.identity] = session.sid
    room.by_edge.setdefault(session.edge_id, set()).add(session.sid)
    _count(room, session, +1)
    room.empty_since = 0
    info = participant_info(session)
    if not session.is_viewer and session.visible:
        out.append(Broadcast(room.id, "speakers", ParticipantJoined(seq=seq, participant=info)))
    out.append(RosterJoin(room.id, info, session.since_seq))
    out.append(CountsMoved(room.id))
    joined = ParticipantJoinedEvent(
        id=f"{seq}.pj", at=at, room_id=room.id, room_sid=room.sid, participant=info
    )
    out.append(PublicEvent(room.id, "participant_joined", joined))


def _count(room: Room, session: SessionRecord, delta: int) -> None:
    if session.is_viewer:
        room.viewers += delta
    else:
        room.speakers += delta
        if delta > 0:
            room.speaker_sids[session.sid] = None
        else:
            room.speaker_sids.pop(session.sid, None)
    if session.kind == "agent":
        room.agents += delta


def _media_changed(
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
    *,
    published: bool = False,
    place: bool = False,
) -> None:
    """Tell the session's forwarder that its media state changed. A session without one
    yet is left alone, unless `place`: then the shell gives it one (forwarder "")."""
    if session.forwarder or place:
        out.append(
            MediaChanged(room.id, session.sid, session.identity, session.forwarder, published)
        )


def _remove(
    room: Room, session: SessionRecord, seq: int, at: int, reason: str, out: list[Outcome]
) -> None:
    """Take a session out of the room and announce it; arm the room's departure timeout."""
    del room.sessions[session.sid]
    _media_changed(room, session, out, published=bool(session.tracks))
    if room.by_identity.get(session.identity) == session.sid:
        del room.by_identity[session.identity]
    edge_sessions = room.by_edge.get(session.edge_id)
    if edge_sessions is not None:
        edge_sessions.discard(session.sid)
        if not edge_sessions:
            del room.by_edge[session.edge_id]
    _count(room, session, -1)
    if not session.is_viewer and session.visible:
        left = ParticipantLeft(
            seq=seq, sid=session.sid, participant_id=session.identity, reason=reason
        )
        out.append(Broadcast(room.id, "speakers", left))
    out.append(RosterLeave(room.id, session.sid, session.since_seq, seq))
    out.append(CountsMoved(room.id))
    info = participant_info(session)
    left_event = ParticipantLeftEvent(
        id=f"{seq}.pl.{session.sid}",
        at=at,
        room_id=room.id,
        room_sid=room.sid,
        participant=info,
        reason=reason,
    )
    out.append(PublicEvent(room.id, "participant_left", left_event))
    if not room.sessions:
        _arm_room_timeout(room, at, room.departure_timeout, out)


def _kick(
    room: Room, session: SessionRecord, seq: int, at: int, reason: ErrorCode, out: list[Outcome]
) -> None:
    out.append(Direct(session_subject(session), Disconnect(reason=reason.value)))
    _remove(room, session, seq, at, reason.value, out)


@handles(JoinRequested)
def _join(state: State, seq: int, event: JoinRequested, out: list[Outcome]) -> None:
    if not (subjects.is_generated_id(event.sid) and subjects.is_generated_id(event.edge_id)):
        _error(event, ErrorCode.BAD_REQUEST, "sid and edge id must be [A-Za-z0-9_-]", out)
        return
    if event.token_id and event.token_id in state.revoked:  # see `_revoke`
        _error(event, ErrorCode.INVALID_TOKEN, REVOKED_MESSAGE, out)
        return
    room = state.rooms.get(event.room_id)
    if room is None:
        room = _open_room(state, seq, event, f"RM_{seq}", out)
    if event.sid in room.sessions:
        _rejoin(room, room.sessions[event.sid], seq, event, out)
        return
    previous = room.session_by_identity(event.participant_id)
    if previous is not None and previous.joined_at > event.at:
        # A stale attempt (stored late, or from a client's older socket) never displaces
        # the newer session of the same identity.
        _error(event, ErrorCode.DUPLICATE_IDENTITY, "a newer session of this identity is in", out)
        return
    if previous is not None:
        _kick(room, previous, seq, event.at, ErrorCode.DUPLICATE_IDENTITY, out)
    if room.max_participants and event.kind != "agent":
        present = room.speakers + room.viewers - room.agents
        if present >= room.max_participants:
            _error(event, ErrorCode.ROOM_FULL, f"room is full ({room.max_participants})", out)
            if not room.sessions:
                _arm_room_timeout(room, event.at, room.departure_timeout, out)
            return
    session = SessionRecord(
        sid=event.sid,
        identity=event.participant_id,
        name=event.name,
        is_viewer=event.is_viewer,
        kind=event.kind,
        grant=event.grant,
        metadata=event.metadata,
        attributes={k: v for k, v in event.attributes.items() if v},
        joined_at=event.at,
        since_seq=seq,
        edge_id=event.edge_id,
        token_id=event.token_id,
        token_expires_at=event.token_expires_at,
        epoch=1,
        visible=not room.livestream or bool(event.metadata or event.attributes),
    )
    _enter(room, session, seq, event.at, out)
    _reply(event, _accepted(room, session, seq, event.req, resumed=False), out)


def _rejoin(
    room: Room, session: SessionRecord, seq: int, event: JoinRequested, out: list[Outcome]
) -> None:
    """A retried join of a session that is already in the room (the same `join_key`, so
    the same sid): the session carries on from its new socket; nobody sees it leave."""
    if session.identity != event.participant_id:
        _error(event, ErrorCode.BAD_REQUEST, "this sid belongs to another participant", out)
        return
    _reconnect(room, session, event.edge_id, "joined again elsewhere", out)
    _reply(event, _accepted(room, session, seq, event.req, resumed=False), out)


def _accepted(
    room: Room, session: SessionRecord, seq: int, req: int, *, resumed: bool
) -> JoinAccepted:
    speakers = tuple(
        participant_info(room.sessions[sid])
        for sid in room.speaker_sids
        if sid != session.sid and room.sessions[sid].visible
    )
    return JoinAccepted(
        id=req,
        seq=seq,
        room=room_info(room),
        participant=participant_info(session),
        grant=session.grant,
        speakers=speakers,
        counts=room.counts(),
        resumed=resumed,
        epoch=session.epoch,
    )


@handles(ResumeRequested)
def _resume(state: State, seq: int, event: ResumeRequested, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    session = room.sessions.get(event.sid) if room is not None else None
    if room is None or session is None or not subjects.is_generated_id(event.edge_id):
        _error(event, ErrorCode.RESUME_FAILED, "the session is gone; join again", out)
        return
    refused = _resume_refused(room, session, event)
    if refused is not None:
        _error(event, ErrorCode.RESUME_FAILED, refused, out)
        return
    _reconnect(room, session, event.edge_id, "resumed elsewhere", out)
    _reply(event, _accepted(room, session, seq, event.req, resumed=True), out)


def _reconnect(
    room: Room, session: SessionRecord, edge_id: str, why: str, out: list[Outcome]
) -> None:
    """The session carries on from a new socket on `edge_id` (a resume or a retried join)."""
    session.epoch += 1  # resume tokens minted before are spent; the reply carries the next
    if session.connected and session.edge_id != edge_id:
        # The old socket is a zombie of this same client: close it quietly.
        out.append(
            Direct(
                session_subject(session),
                Disconnect(reason=ErrorCode.RESUME_FAILED.value, message=why),
            )
        )
    _move_edge(room, session, edge_id)
    _media_changed(room, session, out)  # its subject (where offers go) may have moved
    session.connected = True
    session.disconnected_at = 0


def _resume_refused(room: Room, session: SessionRecord, event: ResumeRequested) -> str | None:
    """Why a resume token may not take this session over, or None when it may."""
    if event.epoch != session.epoch or (event.room_sid and event.room_sid != room.sid):
        return "this resume token was used already or is stale; join again"
    if session.token_expires_at and event.at >= session.token_expires_at:
        return "the participant token has expired; join again with a new one"
    return None


def _move_edge(room: Room, session: SessionRecord, edge_id: str) -> None:
    if session.edge_id == edge_id:
        return
    old = room.by_edge.get(session.edge_id)
    if old is not None:
        old.discard(session.sid)
        if not old:
            del room.by_edge[session.edge_id]
    session.edge_id = edge_id
    room.by_edge.setdefault(edge_id, set()).add(session.sid)


@handles(LeaveRequested)
def _leave(state: State, seq: int, event: LeaveRequested, out: list[Outcome]) -> None:
    found = _session(state, event, out)
    if found is None:
        return
    room, session = found
    _ack(event, out)
    _remove(room, session, seq, event.at, ErrorCode.CLIENT_LEFT.value, out)


def _start_grace(room: Room, session: SessionRecord, at: int, out: list[Outcome]) -> None:
    session.connected = False
    session.disconnected_at = at
    due = GraceExpired(
        room_id=room.id, at=at + room.departure_timeout * 1000, sid=session.sid, disconnected_at=at
    )
    out.append(TimerDue(due))


@handles(SessionDisconnected)
def _disconnected(state: State, seq: int, event: SessionDisconnected, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    session = room.sessions.get(event.sid) if room is not None else None
    if room is None or session is None or not session.connected or session.edge_id != event.edge_id:
        return  # already gone, already in its grace, or resumed on another edge
    _start_grace(room, session, event.at, out)


@handles(EdgeLost)
def _edge_lost(state: State, seq: int, event: EdgeLost, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    if room is None:
        return
    for sid in sorted(room.by_edge.get(event.edge_id, ())):
        session = room.sessions[sid]
        if session.connected:
            _start_grace(room, session, event.at, out)


@handles(SessionsAlive)
def _sessions_alive(state: State, seq: int, event: SessionsAlive, out: list[Outcome]) -> None:
    if not subjects.is_generated_id(event.edge_id):
        return
    room = state.rooms.get(event.room_id)
    for sid in event.sids:
        if not subjects.is_generated_id(sid):
            continue
        session = room.sessions.get(sid) if room is not None else None
        if session is None:
            # Removed while its edge was cut off, and the disconnect it was sent was lost.
            out.append(Direct(subjects.session(event.edge_id, sid), _lost()))
        elif session.edge_id == event.edge_id and not session.connected:
            session.connected = True  # its grace ends; the armed GraceExpired finds it so
            session.disconnected_at = 0


def _lost() -> Disconnect:
    return Disconnect(
        reason=ErrorCode.SESSION_LOST.value,
        message="the session ended while disconnected; join again",
        can_reconnect=True,
    )


@handles(GraceExpired)
def _grace_expired(state: State, seq: int, event: GraceExpired, out: list[Outcome]) -> None:
    room = state.rooms.get(event.room_id)
    session = room.sessions.get(event.sid) if room is not None else None
    if room is None or session is None or session.connected:
        return
    if session.disconnected_at != event.disconnected_at:
        return  # it resumed and dropped again; the newer grace decides
    # Its socket may in fact still be open (an edge that was cut off from NATS, say): tell
    # it, so the client joins again instead of talking to a session that is gone.
    out.append(Direct(session_subject(session), _lost()))
    _remove(room, session, seq, event.at, "DISCONNECTED", out)


# --------------------------------------------------------------------------- participant data


def _changed(
    room: Room, session: SessionRecord, seq: int, out: list[Outcome], *, hand: bool | None = None
) -> None:
    """Announce a change of a session's name, metadata, attributes or tracks."""
    info = participant_info(session)
    if session.is_viewer:
        out.append(Broadcast(room.id, "mod", ViewerUpdated(seq=seq, participant=info)))
    elif session.visible:
        out.append(Broadcast(room.id, "speakers", ParticipantUpdated(seq=seq, participant=info)))
    elif room.livestream and (session.metadata or session.attributes or session.tracks):
        session.visible = True  # livestream mode: visible from now on, for this session
        out.append(Broadcast(room.id, "speakers", ParticipantJoined(seq=seq, participant=info)))
    if hand is not None:
        out.append(Broadcast(room.id, "mod", HandChanged(seq=seq, participant=info, raised=hand)))
    out.append(RosterUpdate(room.id, info, session.since_seq))


def _merge_attributes(session: SessionRecord, update: dict[str, str]) -> bool | None:
    """Merge (an empty value deletes); return the new hand state if it changed."""
    before = session.attributes.get(HAND_ATTRIBUTE) == HAND_RAISED
    for key, value in update.items():
        if value:
            session.attributes[key] = value
            session.info = None
        else:
            session.attributes.pop(key, None)
            session.info = None
    after = session.attributes.get(HAND_ATTRIBUTE) == HAND_RAISED
    return after if after != before else None


@handles(MetadataSet)
def _set_metadata(state: State, seq: int, event: MetadataSet, out: list[Outcome]) -> None:
    found = _session(state, event, out)
    if found is None:
        return
    room, session = found
    session.metadata = event.metadata
    session.info = None
    _changed(room, session, seq, out)
    _ack(event, out)


@handles(AttributesSet)
def _set_attributes(state: State, seq: int, event: AttributesSet, out: list[Outcome]) -> None:
    found = _session(state, event, out)
    if found is None:
        return
    room, session = found
    hand = _merge_attributes(session, event.attributes)
    _changed(room, session, seq, out, hand=hand)
    _ack(event, out)


# --------------------------------------------------------------------------- tracks


def _may_publish(session: SessionRecord) -> ErrorCode | None:
    if session.is_viewer:
        return ErrorCode.INVALID_PERMISSIONS
    if not session.grant.can_publish:
        return ErrorCode.INVALID_PERMISSIONS
    return None


@handles(TrackPublishRequested)
def _publish(state: State, seq: int, event: TrackPublishRequested, out: list[Outcome]) -> None:
    found = _session(state, event, out)
    if found is None:
        return
    room, session = found
    if _may_publish(session) is not None:
        _error(event, ErrorCode.INVALID_PERMISSIONS, "this participant may not publish", out)
        return
    if len(session.tracks) >= 64:
        _error(event, ErrorCode.BAD_REQUEST, "at most 64 tracks per participant", out)
        return
    track = event.track
    if not subjects.is_generated_id(track.sid):
        _error(event, ErrorCode.BAD_REQUEST, "a track sid must match [A-Za-z0-9_-]+", out)
        return
    session.tracks[track.sid] = track
    session.info = None
    _media_changed(room, session, out, published=True)
    was_visible = session.visible
    _changed_tracks(room, session, seq, out)
    if was_visible:
        out.append(
            Broadcast(
                room.id,
                "speakers",
                TrackPublished(seq=seq, participant_id=session.identity, track=track),
            )
        )
    published = TrackPublishedEvent(
        id=f"{seq}.tp",
        at=event.at,
        room_id=room.id,
        room_sid=room.sid,
        participant=participant_info(session),
        track=track,
    )
    out.append(PublicEvent(room.id, "track_published", published))
    _ack(event, out, sid=track.sid)


def _changed_tracks(room: Room, session: SessionRecord, seq: int, out: list[Outcome]) -> None:
    """Tracks changed: make a hidden livestream speaker visible; keep the roster row fresh."""
    info = participant_info(session)
    if not session.visible and session.tracks:
        session.visible = True
        out.append(Broadcast(room.id, "speakers", ParticipantJoined(seq=seq, participant=info)))
    out.append(RosterUpdate(room.id, info, session.since_seq))


def _drop_track(
    room: Room, session: SessionRecord, track: TrackInfo, seq: int, at: int, out: list[Outcome]
) -> None:
    del session.tracks[track.sid]
    session.info = None
    _media_changed(room, session, out, published=True)
    if session.visible and not session.is_viewer:
        gone = TrackUnpublished(
            seq=seq, participant_id=session.identity, track_sid=track.sid, kind=track.kind
        )
        out.append(Broadcast(room.id, "speakers", gone))
    unpublished = TrackUnpublishedEvent(
        id=f"{seq}.tu.{track.sid}",
        at=at,
        room_id=room.id,
        room_sid=room.sid,
        participant=participant_info(session),
        track=track,
    )
    out.append(PublicEvent(room.id, "track_unpublished", unpublished))


@handles(TrackUnpublishRequested)
def _unpublish(state: State, seq: int, event: TrackUnpublishRequested, out: list[Outcome]) -> None:
    found = _session(state, event, out)
    if found is None:
        return
    room, session = found
    track = session.tracks.get(event.track_sid)
    if track is None:
        _error(event, ErrorCode.TRACK_NOT_FOUND, f"no track {event.track_sid!r}", out)
        return
    _drop_track(room, session, track, seq, event.at, out)
    out.append(RosterUpdate(room.id, participant_info(session), session.since_seq))
    _ack(event, out)


def _mute(
    room: Room, session: SessionRecord, track_sid: str, muted: bool, seq: int, out: list[Outcome]
) -> bool:
    track = session.tracks.get(track_sid)
    if track is None:
        return False
    if track.muted != muted:
        session.tracks[track_sid] = TrackInfo(
            sid=track.sid, kind=track.kind, source=track.source, name=track.name, muted=muted
        )
        session.info = None
        _media_changed(room, session, out)
        if session.visible:
            change = TrackMuted(
                seq=seq, participant_id=session.identity, track_sid=track_sid, muted=muted
            )
            out.append(Broadcast(room.id, "speakers", change))
        out.append(RosterUpdate(room.id, participant_info(session), session.since_seq))
    return True


@handles(TrackMuteRequested)
def _mute_track(state: State, seq: int, event: TrackMuteRequested, out: list[Outcome]) -> None:
    found = _session(state, event, out)
    if found is None:
        return
    room, session = found
    if not _mute(room, session, event.track_sid, event.muted, seq, out):
        _error(event, ErrorCode.TRACK_NOT_FOUND, f"no track {event.track_sid!r}", out)
        return
    _ack(event, out)


@handles(TrackMuteForced)
def _mute_forced(state: State, seq: int, event: TrackMuteForced, out: list[Outcome]) -> None:
    found = _participant(state, event, out)
    if found is None:
        return
    room, session = found
    if not _mute(room, session, event.track_sid, event.muted, seq, out):
        _error(event, ErrorCode.TRACK_NOT_FOUND, f"no track {event.track_sid!r}", out)
        return
    _reply(event, ParticipantReply(participant=participant_info(session)), out)


@handles(SubscriptionRequested)
def _subscription(state: State, seq: int, event: SubscriptionRequested, out: list[Outcome]) -> None:
    found = _session(state, event, out)
    if found is None:
        return
    room, subscriber = found
    key = (event.participant_id, event.kind)
    if not event.subscribed:
        subscriber.subscriptions.discard(key)
        _media_changed(room, subscriber, out)
        _ack(event, out)
        return
    publisher = room.session_by_identity(event.participant_id)
    if publisher is None:
        _error(event, ErrorCode.PARTICIPANT_NOT_FOUND, f"no {event.participant_id!r}", out)
        return
    if publisher.is_viewer:
        _error(event, ErrorCode.INVALID_PERMISSIONS, "viewers have no media", out)
        return
    if not subscriber.grant.can_subscribe:
        _error(event, ErrorCode.INVALID_PERMISSIONS, "this participant may not subscribe", out)
        return
    if not any(t.kind == event.kind for t in publisher.tracks.values()):
        _error(
            event,
            ErrorCode.NOT_PUBLISHED,
            f"{event.participant_id!r} has no {event.kind} track",
            out,
        )
        return
    subscriber.subscriptions.add(key)
    _media_changed(room, subscriber, out, place=True)  # a subscriber needs a forwarder too
    _ack(event, out)


@handles(ForwarderAssigned)
def _forwarder_assigned(
    state: State, seq: int, event: ForwarderAssigned, out: list[Outcome]
) -> None:
    """The statekeeper chose the session's forwarder (written by the statekeeper itself)."""
    room = state.rooms.get(event.room_id)
    session = room.sessions.get(event.sid) if room is not None else None
    if room is None or session is None or not subjects.is_generated_id(event.forwarder_id):
        return
    if session.forwarder and session.forwarder != event.forwarder_id:
        _media_changed(room, session, out, published=True)  # the old one drops it
    session.forwarder = event.forwarder_id
    _media_changed(room, session, out, published=True)


# --------------------------------------------------------------------------- admin on participants


@handles(ParticipantRemoveRequested)
def _remove_participant(
    state: State, seq: int, event: ParticipantRemoveRequested, out: list[Outcome]
) -> None:
    found = _participant(state, event, out)
    if found is None:
        return
    room, session = found
    _revoke(state, session, event.at, out)
    _kick(room, session, seq, event.at, ErrorCode.REMOVED, out)
    _reply(event, OkReply(), out)


def _revoke(state: State, session: SessionRecord, at: int, out: list[Outcome]) -> None:
    """Refuse the session's token in every room until it expires (a removed participant
    whose token has no participant id gets a new id per join, so the token id is the key).

    Entries past their token's expiry (plus the clock skew a token check tolerates) are
    dropped here, by the event's time, so replays prune alike.
    """
    for token_id in [t for t, exp in state.revoked.items() if exp and exp + REVOKED_KEPT_MS < at]:
        del state.revoked[token_id]
    if session.token_id:
        state.revoked[session.token_id] = session.token_expires_at
    out.append(RevocationsChanged())


@handles(ParticipantUpdateRequested)
def _update_participant(
    state: State, seq: int, event: ParticipantUpdateRequested, out: list[Outcome]
) -> None:
    found = _participant(state, event, out)
    if found is None:
        return
    room, session = found
    if event.is_viewer is not None and event.is_viewer != session.is_viewer:
        _change_tier(room, session, event.is_viewer, event.grant, seq, event.at, out)
    elif event.grant is not None and event.grant != session.grant:
        session.grant = event.grant
        out.append(
            Direct(
                session_subject(session),
                TierChanged(seq=seq, participant=participant_info(session), grant=session.grant),
            )
        )
    hand: bool | None = None
    details = event.name is not None or event.metadata is not None or event.attributes is not None
    if event.name is not None:
        session.name = event.name
        session.info = None
    if event.metadata is not None:
        session.metadata = event.metadata
        session.info = None
    if event.attributes is not None:
        hand = _merge_attributes(session, event.attributes)
    if details:
        _changed(room, session, seq, out, hand=hand)
    _reply(event, ParticipantReply(participant=participant_info(session)), out)


def _change_tier(
    room: Room,
    session: SessionRecord,
    to_viewer: bool,
    grant: Grant | None,
    seq: int,
    at: int,
    out: list[Outcome],
) -> None:
    """Promote a viewer to the stage or demote a speaker to the audience, live."""
    if not to_viewer:
        _count(room, session, -1)
        session.is_viewer = False
        session.info = None
        _count(room, session, +1)
        session.visible = True  # invited to the stage: on it for everyone
        out.append(
            Broadcast(
                room.id,
                "speakers",
                ParticipantJoined(seq=seq, participant=participant_info(session)),
            )
        )
    else:
        if session.visible:
            left = ParticipantLeft(
                seq=seq, sid=session.sid, participant_id=session.identity, reason="DEMOTED"
            )
            out.append(Broadcast(room.id, "speakers", left))
        session.visible = False  # its tracks leave with it: no separate unpublish broadcasts
        for track in list(session.tracks.values()):
            _drop_track(room, session, track, seq, at, out)
        _count(room, session, -1)
        session.is_viewer = True
        session.info = None
        _count(room, session, +1)
        session.visible = not room.livestream
    if grant is not None:
        session.grant = grant
    out.append(RosterLeave(room.id, session.sid, session.since_seq, seq))
    session.since_seq = seq
    info = participant_info(session)
    out.append(RosterJoin(room.id, info, seq))
    out.append(CountsMoved(room.id))
    out.append(
        Direct(
            session_subject(session), TierChanged(seq=seq, participant=info, grant=session.grant)
        )
    )
