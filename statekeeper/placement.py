"""Forwarder placement: which forwarder carries a session's media, and moving it off one
that died.

The choice is the least-loaded live forwarder (`ForwarderTable`); it is logged as a
`ForwarderAssigned` event, so the fold (and every replay) holds it. Until that event is
folded, the choice waits in `placing`, so a session is never placed twice at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.msg import Msg

from access.rules import refuse_publish
from schemas.api import MediaAssignment, MediaAssignRequest
from schemas.codec import SchemaError, decode
from schemas.errors import ErrorCode
from schemas.log import ForwarderAssigned, LogEvent
from schemas.media import ForwarderHeartbeat
from statekeeper.errors import MediaRefused, NoForwarder
from statekeeper.media import ForwarderTable, sessions_on
from statekeeper.outcomes import MediaChanged
from statekeeper.state import State

log = logging.getLogger("stagecast.statekeeper")


class Placement:
    """Places sessions on forwarders and moves them off dead ones."""

    def __init__(
        self,
        forwarders: ForwarderTable,
        *,
        clock: Callable[[], int],
        state: Callable[[], State],
        caught_up: Callable[[], bool],
        append: Callable[[str, LogEvent], None],
    ) -> None:
        self.forwarders = forwarders
        self._clock = clock
        self._state = state
        self._caught_up = caught_up
        self._append = append
        self._placing: dict[tuple[str, str], str] = {}
        """Forwarder assignments appended to the log but not folded yet."""
        self._forwarder_lost = True
        """Some session may sit on a dead forwarder (`check_forwarders` looks)."""

    async def on_forwarder_beat(self, msg: Msg) -> None:
        """A forwarder beat; one that says it is stopping has its sessions moved now."""
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        if isinstance(beat, ForwarderHeartbeat):
            self.forwarders.beat(beat, self._clock())
            if beat.stopping:
                self._forwarder_lost = True
                self.check_forwarders()

    def check_forwarders(self) -> None:
        """Move the sessions of forwarders that stopped beating to live ones.

        The sessions are scanned only when a forwarder may have gone: at start (a restarted
        statekeeper may hold placements on a forwarder that is long dead), when one expired
        or said it is stopping, and again while no live forwarder could take them.
        """
        now = self._clock()
        if self.forwarders.expire(now):
            self._forwarder_lost = True
        if not (self._forwarder_lost and self._caught_up()):
            return
        if self.forwarders.least_loaded(now) is None:
            return  # nowhere to move them yet: try again at the next check
        self._forwarder_lost = False
        state = self._state()
        placed = {s.forwarder for room in state.rooms.values() for s in room.sessions.values()}
        for forwarder_id in sorted(placed - {""}):
            if self.forwarders.is_live(forwarder_id, now):
                continue
            moved = [key for key in sessions_on(state, forwarder_id) if key not in self._placing]
            log.warning("forwarder %s is gone; moving its %d sessions", forwarder_id, len(moved))
            for room_id, sid in moved:
                self._place(room_id, sid, now)

    def assign_media(self, request: MediaAssignRequest) -> MediaAssignment:
        """The forwarder for a session's media: its own if live, else a new least-loaded one
        (logged as `ForwarderAssigned`). Checks an announced `track_sid` on the way."""
        room = self._state().rooms.get(request.room_id)
        session = room.sessions.get(request.sid) if room is not None else None
        if session is None:
            raise MediaRefused(ErrorCode.NOT_JOINED, "no such session in this room")
        kind = None
        if request.track_sid is not None:
            track = session.tracks.get(request.track_sid)
            refusal = refuse_publish(session.is_viewer, session.grant)
            if refusal is not None:
                raise MediaRefused(refusal.code, refusal.reason)
            if track is None:
                raise MediaRefused(
                    ErrorCode.TRACK_NOT_FOUND,
                    f"no announced track {request.track_sid!r}: send publish_track first",
                )
            kind = track.kind
        now = self._clock()
        current = self._placing.get((request.room_id, session.sid), session.forwarder)
        if current and self.forwarders.is_live(current, now):
            return MediaAssignment(forwarder_id=current, kind=kind)
        return MediaAssignment(
            forwarder_id=self._place(request.room_id, session.sid, now), kind=kind
        )

    def place_subscriber(self, room_id: str, sid: str) -> None:
        """A session subscribed before it had a forwarder: give it one, if any is live."""
        if not self._caught_up() or (room_id, sid) in self._placing:
            return
        try:
            self._place(room_id, sid, self._clock())
        except NoForwarder:
            log.debug("no forwarder for subscriber %s yet", sid)

    def folded(self, outcome: MediaChanged) -> None:
        """The fold reported a session's forwarder: a pending choice of it is now held."""
        key = (outcome.room_id, outcome.sid)
        if self._placing.get(key) == outcome.forwarder:
            del self._placing[key]

    def _place(self, room_id: str, sid: str, now: int) -> str:
        forwarder_id = self.forwarders.least_loaded(now)
        if forwarder_id is None:
            raise NoForwarder()
        self.forwarders.assigned(forwarder_id)
        self._placing[(room_id, sid)] = forwarder_id
        event = ForwarderAssigned(room_id=room_id, at=now, sid=sid, forwarder_id=forwarder_id)
        self._append(f"forwarder:{room_id}:{sid}:{forwarder_id}:{now}", event)
        return forwarder_id
