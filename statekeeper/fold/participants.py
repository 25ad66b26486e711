"""The fold on participants: their details, and the tier and grant an admin changes live.

Also an admin's removal, which revokes the participant's token in every room.
"""

from __future__ import annotations

import msgspec

from schemas.api import OkReply, ParticipantReply
from schemas.client import (
    HandChanged,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    TierChanged,
    ViewerUpdated,
)
from schemas.errors import ErrorCode
from schemas.log import (
    AttributesSet,
    MetadataSet,
    ParticipantRemoveRequested,
    ParticipantUpdateRequested,
)
from schemas.models import HAND_ATTRIBUTE, HAND_RAISED, Grant
from statekeeper.fold.dispatch import on_participant, on_session
from statekeeper.fold.replies import ack, reply, session_subject
from statekeeper.fold.sessions import kick
from statekeeper.fold.tracks import drop_track
from statekeeper.outcomes import (
    Broadcast,
    CountsMoved,
    Direct,
    Outcome,
    RevocationsChanged,
    RosterJoin,
    RosterLeave,
    RosterUpdate,
)
from statekeeper.state import (
    Room,
    SessionRecord,
    State,
    hand_changed,
    participant_info,
    tally,
    view_changed,
)

REVOKED_KEPT_MS = 60_000
"""How long past its token's expiry a revocation is kept (beyond any tolerated clock skew)."""


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
        view_changed(room, session)
        info = participant_info(session)
        out.append(Broadcast(room.id, "speakers", ParticipantJoined(seq=seq, participant=info)))
    if hand is not None:
        out.append(Broadcast(room.id, "mod", HandChanged(seq=seq, participant=info, raised=hand)))
    out.append(RosterUpdate(room.id, info, session.since_seq))


def _merge_attributes(room: Room, session: SessionRecord, update: dict[str, str]) -> bool | None:
    """Merge (an empty value deletes); return the new hand state if it changed."""
    before = session.attributes.get(HAND_ATTRIBUTE) == HAND_RAISED
    for key, value in update.items():
        if value:
            session.attributes[key] = value
        else:
            session.attributes.pop(key, None)
    if update:
        view_changed(room, session)
    after = hand_changed(room, session)
    return after if after != before else None


@on_session(MetadataSet)
def _set_metadata(
    state: State,
    seq: int,
    event: MetadataSet,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    session.metadata = event.metadata
    view_changed(room, session)
    _changed(room, session, seq, out)
    ack(event, out)


@on_session(AttributesSet)
def _set_attributes(
    state: State,
    seq: int,
    event: AttributesSet,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    hand = _merge_attributes(room, session, event.attributes)
    _changed(room, session, seq, out, hand=hand)
    ack(event, out)


@on_participant(ParticipantRemoveRequested)
def _remove_participant(
    state: State,
    seq: int,
    event: ParticipantRemoveRequested,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    _revoke(state, session, event.at, out)
    kick(room, session, seq, event.at, ErrorCode.REMOVED, out)
    reply(event, OkReply(), out)


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


@on_participant(ParticipantUpdateRequested)
def _update_participant(
    state: State,
    seq: int,
    event: ParticipantUpdateRequested,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
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
        view_changed(room, session)
    if event.metadata is not None:
        session.metadata = event.metadata
        view_changed(room, session)
    if event.attributes is not None:
        hand = _merge_attributes(room, session, event.attributes)
    if details:
        _changed(room, session, seq, out, hand=hand)
    reply(event, ParticipantReply(participant=participant_info(session)), out)


def _change_tier(
    room: Room,
    session: SessionRecord,
    to_viewer: bool,
    grant: Grant | None,
    seq: int,
    at: int,
    out: list[Outcome],
) -> None:
    """Promote a viewer to the stage or demote a speaker to the audience, live.

    Without an explicit `grant`, a promotion gives the speaker grant (publish, subscribe,
    data) and a demotion takes publishing away (media and data), other flags kept. A
    promotion lowers a raised hand: the invitation answered it.
    """
    if grant is None:
        grant = msgspec.structs.replace(
            session.grant,
            can_publish=not to_viewer,
            can_publish_data=not to_viewer,
            can_subscribe=True if not to_viewer else session.grant.can_subscribe,
        )
    if not to_viewer:
        tally(room, session, -1)
        session.is_viewer = False
        tally(room, session, +1)
        session.visible = True  # invited to the stage: on it for everyone
        hand_was_up = session.attributes.pop(HAND_ATTRIBUTE, None) == HAND_RAISED
        hand_changed(room, session)
        view_changed(room, session)
        if hand_was_up:
            lowered = HandChanged(seq=seq, participant=participant_info(session), raised=False)
            out.append(Broadcast(room.id, "mod", lowered))
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
        view_changed(room, session)
        for track in list(session.tracks.values()):
            drop_track(room, session, track, seq, at, out)
        tally(room, session, -1)
        session.is_viewer = True
        tally(room, session, +1)
        session.visible = not room.livestream
        view_changed(room, session)
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
