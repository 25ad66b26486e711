"""The fold on media placement: telling a session's forwarder, recording its choice."""

from __future__ import annotations

from schemas import subjects
from schemas.log import ForwarderAssigned
from statekeeper.fold.dispatch import find_session, handles
from statekeeper.outcomes import MediaChanged, Outcome
from statekeeper.state import Room, SessionRecord, State


def media_changed(
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


@handles(ForwarderAssigned)
def _forwarder_assigned(
    state: State, seq: int, event: ForwarderAssigned, out: list[Outcome]
) -> None:
    """The statekeeper chose the session's forwarder (written by the statekeeper itself)."""
    found = find_session(state, event)
    if found is None or not subjects.is_generated_id(event.forwarder_id):
        return
    room, session = found
    if session.forwarder and session.forwarder != event.forwarder_id:
        media_changed(room, session, out, published=True)  # the old one drops it
    session.forwarder = event.forwarder_id
    media_changed(room, session, out, published=True)
