"""The fold on sessions: joining, leaving, resuming, and losing a socket or an edge.

A session's tier (speaker or viewer) is fixed at join here; changing it live is in
`statekeeper.fold.participants`.
"""

from __future__ import annotations

from schemas import subjects
from schemas.client import (
    Disconnect,
    HandChanged,
    JoinAccepted,
    ParticipantJoined,
    ParticipantLeft,
)
from schemas.errors import ErrorCode
from schemas.events import ParticipantJoinedEvent, ParticipantLeftEvent
from schemas.log import (
    EdgeLost,
    GraceExpired,
    JoinRequested,
    LeaveRequested,
    ResumeRequested,
    SessionDisconnected,
    SessionsAlive,
)
from statekeeper.fold.dispatch import find_session, handles, on_session
from statekeeper.fold.media import media_changed
from statekeeper.fold.replies import ack, error, lost, reply, session_subject
from statekeeper.fold.rooms import arm_room_timeout, open_room
from statekeeper.outcomes import (
    Broadcast,
    CountsMoved,
    Direct,
    Outcome,
    PublicEvent,
    RosterJoin,
    RosterLeave,
    TimerDue,
)
from statekeeper.state import (
    Room,
    SessionRecord,
    State,
    index_session,
    participant_info,
    room_info,
    unindex_session,
    visible_speakers,
)

REVOKED_MESSAGE = "this token was removed from a room; ask for a new one"

_PLAIN_EDGES: set[str] = set()
"""Edge ids found plain already (a handful per deployment): a join checks its edge's once."""


def _plain_edge(edge_id: str) -> bool:
    """`subjects.is_generated_id` for an edge id, remembered (a pure function's memo)."""
    if edge_id in _PLAIN_EDGES:
        return True
    if not subjects.is_generated_id(edge_id):
        return False
    if len(_PLAIN_EDGES) < 1024:
        _PLAIN_EDGES.add(edge_id)
    return True


def _enter(room: Room, session: SessionRecord, seq: int, at: int, out: list[Outcome]) -> None:
    """Add a session to the room's indexes and announce it."""
    index_session(room, session)
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


def _remove(
    room: Room, session: SessionRecord, seq: int, at: int, reason: str, out: list[Outcome]
) -> None:
    """Take a session out of the room and announce it; arm the room's departure timeout."""
    unindex_session(room, session)
    media_changed(room, session, out, published=bool(session.tracks))
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
        arm_room_timeout(room, at, room.departure_timeout, out)


def kick(
    room: Room, session: SessionRecord, seq: int, at: int, reason: ErrorCode, out: list[Outcome]
) -> None:
    out.append(Direct(session_subject(session), Disconnect(reason=reason.value)))
    _remove(room, session, seq, at, reason.value, out)


@handles(JoinRequested)
def _join(state: State, seq: int, event: JoinRequested, out: list[Outcome]) -> None:
    if not (subjects.is_generated_id(event.sid) and _plain_edge(event.edge_id)):
        error(event, ErrorCode.BAD_REQUEST, "sid and edge id must be [A-Za-z0-9_-]", out)
        return
    if event.token_id and event.token_id in state.revoked:  # see `_revoke`
        error(event, ErrorCode.INVALID_TOKEN, REVOKED_MESSAGE, out)
        return
    room = state.rooms.get(event.room_id)
    if room is None:
        room = open_room(state, seq, event, f"RM_{seq}", out)
    if event.sid in room.sessions:
        _rejoin(room, room.sessions[event.sid], seq, event, out)
        return
    previous = room.session_by_identity(event.participant_id)
    if previous is not None and previous.joined_at > event.at:
        # A stale attempt (stored late, or from a client's older socket) never displaces
        # the newer session of the same identity.
        error(event, ErrorCode.DUPLICATE_IDENTITY, "a newer session of this identity is in", out)
        return
    if previous is not None:
        kick(room, previous, seq, event.at, ErrorCode.DUPLICATE_IDENTITY, out)
    if room.max_participants and event.kind != "agent":
        present = room.speakers + room.viewers - room.agents
        if present >= room.max_participants:
            error(event, ErrorCode.ROOM_FULL, f"room is full ({room.max_participants})", out)
            if not room.sessions:
                arm_room_timeout(room, event.at, room.departure_timeout, out)
            return
    session = SessionRecord(
        sid=event.sid,
        identity=event.participant_id,
        name=event.name,
        is_viewer=event.is_viewer,
        kind=event.kind,
        grant=event.grant,
        metadata=event.metadata,
        attributes={k: v for k, v in event.attributes.items() if v} if event.attributes else {},
        joined_at=event.at,
        since_seq=seq,
        edge_id=event.edge_id,
        token_id=event.token_id,
        token_expires_at=event.token_expires_at,
        epoch=1,
        visible=not room.livestream or bool(event.metadata or event.attributes),
    )
    _enter(room, session, seq, event.at, out)
    if event.reply_to:  # nobody asked: the answer is not built
        reply(event, _accepted(room, session, seq, event.req, resumed=False), out)
        if session.grant.can_moderate:
            _hands_up(room, session, seq, event.reply_to, out)


def _hands_up(
    room: Room, moderator: SessionRecord, seq: int, subject: str, out: list[Outcome]
) -> None:
    """Tell a moderator who just joined of the hands already up, as `hand-raised` frames
    after its join reply (as speakers already present come in the reply); `room.hands`
    holds them, so this costs the hands, not the room."""
    for other in list(room.hands.values()):
        if other is not moderator:
            raised = HandChanged(seq=seq, participant=participant_info(other), raised=True)
            out.append(Direct(subject, raised))


def _rejoin(
    room: Room, session: SessionRecord, seq: int, event: JoinRequested, out: list[Outcome]
) -> None:
    """A retried join of a session that is already in the room (the same `join_key`, so
    the same sid): the session carries on from its new socket; nobody sees it leave."""
    if session.identity != event.participant_id:
        error(event, ErrorCode.BAD_REQUEST, "this sid belongs to another participant", out)
        return
    _reconnect(room, session, event.edge_id, "joined again elsewhere", out)
    reply(event, _accepted(room, session, seq, event.req, resumed=False), out)


def _accepted(
    room: Room, session: SessionRecord, seq: int, req: int, *, resumed: bool
) -> JoinAccepted:
    speakers = visible_speakers(room)
    if not session.is_viewer:  # a speaker's own view is not among "the others"
        own = session.sid
        speakers = tuple([view for view in speakers if view.sid != own])
    info = room_info(room)
    return JoinAccepted(
        id=req,
        seq=seq,
        room=info,
        participant=participant_info(session),
        grant=session.grant,
        speakers=speakers,
        counts=info.counts,
        resumed=resumed,
        epoch=session.epoch,
    )


@handles(ResumeRequested)
def _resume(state: State, seq: int, event: ResumeRequested, out: list[Outcome]) -> None:
    found = find_session(state, event)
    if found is None or not subjects.is_generated_id(event.edge_id):
        error(event, ErrorCode.RESUME_FAILED, "the session is gone; join again", out)
        return
    room, session = found
    refused = _resume_refused(room, session, event)
    if refused is not None:
        error(event, ErrorCode.RESUME_FAILED, refused, out)
        return
    _reconnect(room, session, event.edge_id, "resumed elsewhere", out)
    reply(event, _accepted(room, session, seq, event.req, resumed=True), out)


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
    media_changed(room, session, out)  # its subject (where offers go) may have moved
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


@on_session(LeaveRequested)
def _leave(
    state: State,
    seq: int,
    event: LeaveRequested,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    ack(event, out)
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
    found = find_session(state, event)
    if found is None or not found[1].connected or found[1].edge_id != event.edge_id:
        return  # already gone, already in its grace, or resumed on another edge
    room, session = found
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
            out.append(Direct(subjects.session(event.edge_id, sid), lost()))
        elif session.edge_id == event.edge_id and not session.connected:
            session.connected = True  # its grace ends; the armed GraceExpired finds it so
            session.disconnected_at = 0


@handles(GraceExpired)
def _grace_expired(state: State, seq: int, event: GraceExpired, out: list[Outcome]) -> None:
    found = find_session(state, event)
    if found is None or found[1].connected:
        return
    room, session = found
    if session.disconnected_at != event.disconnected_at:
        return  # it resumed and dropped again; the newer grace decides
    # Its socket may in fact still be open (an edge that was cut off from NATS, say): tell
    # it, so the client joins again instead of talking to a session that is gone.
    out.append(Direct(session_subject(session), lost()))
    _remove(room, session, seq, event.at, "DISCONNECTED", out)
