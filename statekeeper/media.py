"""Media placement: which forwarder carries each session, and what it should carry.

The statekeeper is the one that places media. Forwarders heart-beat their load
(`ForwarderTable`); a session's first media request (its edge asks, `MediaAssignRequest`)
gets the least loaded live forwarder, written to the room log as `ForwarderAssigned` so a
restarted statekeeper knows it too. When a forwarder stops beating, its sessions move to
live ones the same way.

What a forwarder should do is level-triggered: whenever the fold says a session's media
changed (`MediaChanged`), `MediaPlanner` sends that session's forwarder the session's whole
desired state (`MediaSession`: its published tracks, mute states and subscribed tracks,
each with the forwarder it is published on). A forwarder that applies the same state twice
changes nothing, and after a statekeeper restart one full sync brings every forwarder up to
date.

A session moved off a forwarder (it died) also gets a `MediaMoved` frame on its direct
subject: its peer connections lead to a process that is gone, and only the client can
offer its published tracks again (the new forwarder offers the subscribed ones itself).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import msgspec

from schemas import subjects
from schemas.client import MediaMoved
from schemas.codec import encode
from schemas.media import ForwarderHeartbeat, MediaSession, MediaSubscribedTrack, MediaTrackState
from statekeeper.fold import session_subject
from statekeeper.outcomes import MediaChanged
from statekeeper.state import Room, SessionRecord, State

log = logging.getLogger("stagecast.statekeeper.media")

FORWARDER_TIMEOUT_MS = 3_000
"""A forwarder silent this long is gone (three missed one-second beats)."""


@dataclasses.dataclass(slots=True)
class _Forwarder:
    seen_at: int
    load: int
    assigned_since_beat: int = 0


class ForwarderTable:
    """Live forwarders and their load, from `stagecast.forwarders.heartbeat`."""

    def __init__(self, timeout_ms: int = FORWARDER_TIMEOUT_MS) -> None:
        self.timeout_ms = timeout_ms
        self._forwarders: dict[str, _Forwarder] = {}

    def beat(self, beat: ForwarderHeartbeat, now: int) -> None:
        if beat.stopping:
            self._forwarders.pop(beat.forwarder_id, None)
            return
        load = beat.peer_connections + beat.legs
        self._forwarders[beat.forwarder_id] = _Forwarder(seen_at=now, load=load)

    def is_live(self, forwarder_id: str, now: int) -> bool:
        found = self._forwarders.get(forwarder_id)
        return found is not None and now - found.seen_at < self.timeout_ms

    def live(self, now: int) -> list[str]:
        return sorted(f for f in self._forwarders if self.is_live(f, now))

    def expire(self, now: int) -> list[str]:
        """Forget forwarders that stopped beating; returns their ids."""
        gone = [f for f, v in self._forwarders.items() if now - v.seen_at >= self.timeout_ms]
        for forwarder_id in gone:
            del self._forwarders[forwarder_id]
        return gone

    def least_loaded(self, now: int) -> str | None:
        """The live forwarder with the least load, counting assignments since its beat."""
        best: tuple[int, str] | None = None
        for forwarder_id in self.live(now):
            f = self._forwarders[forwarder_id]
            key = (f.load + f.assigned_since_beat, forwarder_id)
            if best is None or key < best:
                best = key
        return None if best is None else best[1]

    def assigned(self, forwarder_id: str) -> None:
        """A session was just placed there: count it until the next beat says so."""
        found = self._forwarders.get(forwarder_id)
        if found is not None:
            found.assigned_since_beat += 2  # a session means about a connection and a leg


def desired_session(room: Room, session: SessionRecord, seq: int) -> MediaSession:
    """What `session`'s forwarder should carry for it now."""
    tracks = tuple(
        MediaTrackState(track_sid=t.sid, kind=t.kind, muted=t.muted)
        for t in session.tracks.values()
    )
    subscribed: list[MediaSubscribedTrack] = []
    for publisher_id, kind in sorted(session.subscriptions):
        publisher = room.session_by_identity(publisher_id)
        if publisher is None or publisher.is_viewer or not publisher.forwarder:
            continue  # its media is not placed yet: a later change brings it
        subscribed.extend(
            MediaSubscribedTrack(
                track_sid=t.sid,
                kind=t.kind,
                publisher_id=publisher.identity,
                publisher_sid=publisher.sid,
                forwarder_id=publisher.forwarder,
            )
            for t in publisher.tracks.values()
            if t.kind == kind
        )
    return MediaSession(
        room_id=room.id,
        sid=session.sid,
        identity=session.identity,
        subject=session_subject(session),
        seq=seq,
        tracks=tracks,
        subscriptions=tuple(subscribed),
    )


class MediaPlanner:
    """Collects `MediaChanged` outcomes and sends forwarders the sessions' new states."""

    def __init__(self, publish: Callable[[str, bytes], None]) -> None:
        self._publish = publish
        self._pending: dict[tuple[str, str], MediaChanged] = {}
        self._moved: list[MediaChanged] = []

    def changed(self, outcome: MediaChanged) -> None:
        if not outcome.forwarder:
            return  # not placed yet: the shell places it, and that change comes back
        key = (outcome.room_id, outcome.sid)
        earlier = self._pending.get(key)
        if earlier is not None and earlier.forwarder != outcome.forwarder:
            self._moved.append(earlier)  # moved within one batch: the old one drops it
        if earlier is not None and earlier.published:
            outcome = msgspec.structs.replace(outcome, published=True)
        self._pending[key] = outcome

    def discard(self) -> None:
        """Forget collected changes (while replaying: a full sync follows catch-up)."""
        self._pending.clear()
        self._moved.clear()

    def flush(self, state: State, seq: int) -> int:
        """Send the state of every changed session (and of its subscribers, when its
        published tracks changed); returns how many states went out."""
        pending, self._pending = self._pending, {}
        moved, self._moved = self._moved, []
        for change in moved:
            self._close(change, seq)
        targets: dict[tuple[str, str], None] = {}
        for (room_id, sid), change in pending.items():
            room = state.rooms.get(room_id)
            session = room.sessions.get(sid) if room is not None else None
            if session is None or session.forwarder != change.forwarder:
                self._close(change, seq)
            if room is None:
                continue
            if session is not None:
                targets[(room_id, sid)] = None
            if change.published:
                targets.update(
                    ((room_id, s.sid), None) for s in _subscribers_of(room, change.identity)
                )
        sent = 0
        for room_id, sid in targets:
            room = state.rooms[room_id]
            session = room.sessions.get(sid)
            if session is not None and session.forwarder:
                self._send(session.forwarder, desired_session(room, session, seq))
                sent += 1
        for change in moved:  # after the states: the new forwarder knows the session first
            self._tell_moved(state, change)
        return sent

    def sync_all(self, state: State, seq: int) -> int:
        """Send every placed session's state (after recovery: forwarders converge)."""
        self.discard()
        sent = 0
        for room in state.rooms.values():
            for session in room.sessions.values():
                if session.forwarder:
                    self._send(session.forwarder, desired_session(room, session, seq))
                    sent += 1
        return sent

    def _close(self, change: MediaChanged, seq: int) -> None:
        closed = MediaSession(
            room_id=change.room_id,
            sid=change.sid,
            identity=change.identity,
            subject="",
            seq=seq,
            closed=True,
        )
        self._send(change.forwarder, closed)

    def _tell_moved(self, state: State, change: MediaChanged) -> None:
        """Tell the client of a session that left `change.forwarder` for another one that its
        media moved (a session that left the room, or has no forwarder now, is not told)."""
        room = state.rooms.get(change.room_id)
        session = room.sessions.get(change.sid) if room is not None else None
        if session is None or session.forwarder in ("", change.forwarder):
            return
        log.info(
            "session %s: media moved %s -> %s", session.sid, change.forwarder, session.forwarder
        )
        self._publish(session_subject(session), encode(MediaMoved()))

    def _send(self, forwarder_id: str, state: MediaSession) -> None:
        self._publish(subjects.forwarder_sessions(forwarder_id), encode(state))


def _subscribers_of(room: Room, identity: str) -> Iterable[SessionRecord]:
    """Sessions subscribed to any kind of `identity`'s tracks (a scan: publishing is rare)."""
    for session in room.sessions.values():
        if session.subscriptions and any(p == identity for p, _k in session.subscriptions):
            yield session


def sessions_on(state: State, forwarder_id: str) -> list[tuple[str, str]]:
    """(room id, sid) of every session placed on `forwarder_id`."""
    return [
        (room.id, session.sid)
        for room in state.rooms.values()
        for session in room.sessions.values()
        if session.forwarder == forwarder_id
    ]
