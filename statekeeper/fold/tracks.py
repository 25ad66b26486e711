"""The fold on tracks and subscriptions: publishing, muting, subscribing."""

from __future__ import annotations

from access.rules import refuse_publish, refuse_subscribe
from schemas import subjects
from schemas.api import ParticipantReply
from schemas.client import ParticipantJoined, TrackMuted, TrackPublished, TrackUnpublished
from schemas.errors import ErrorCode
from schemas.events import TrackPublishedEvent, TrackUnpublishedEvent
from schemas.log import (
    SubscriptionRequested,
    TrackMuteForced,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.models import TrackInfo
from statekeeper.fold.dispatch import on_participant, on_session
from statekeeper.fold.media import media_changed
from statekeeper.fold.replies import ack, error, reply
from statekeeper.outcomes import Broadcast, Outcome, PublicEvent, RosterUpdate
from statekeeper.state import (
    Room,
    SessionRecord,
    State,
    participant_info,
    subscribe,
    unsubscribe,
    view_changed,
)

MAX_TRACKS = 64
"""The most tracks one participant may publish at once."""


@on_session(TrackPublishRequested)
def _publish(
    state: State,
    seq: int,
    event: TrackPublishRequested,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    refusal = refuse_publish(session.is_viewer, session.grant)
    if refusal is not None:
        error(event, refusal.code, refusal.reason, out)
        return
    if len(session.tracks) >= MAX_TRACKS:
        error(event, ErrorCode.BAD_REQUEST, f"at most {MAX_TRACKS} tracks per participant", out)
        return
    track = event.track
    if not subjects.is_generated_id(track.sid):
        error(event, ErrorCode.BAD_REQUEST, "a track sid must match [A-Za-z0-9_-]+", out)
        return
    session.tracks[track.sid] = track
    view_changed(room, session)
    media_changed(room, session, out, published=True)
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
    ack(event, out, sid=track.sid)


def _changed_tracks(room: Room, session: SessionRecord, seq: int, out: list[Outcome]) -> None:
    """Tracks changed: make a hidden livestream speaker visible; keep the roster row fresh."""
    info = participant_info(session)
    if not session.visible and session.tracks:
        session.visible = True
        view_changed(room, session)
        out.append(Broadcast(room.id, "speakers", ParticipantJoined(seq=seq, participant=info)))
    out.append(RosterUpdate(room.id, info, session.since_seq))


def drop_track(
    room: Room, session: SessionRecord, track: TrackInfo, seq: int, at: int, out: list[Outcome]
) -> None:
    del session.tracks[track.sid]
    view_changed(room, session)
    media_changed(room, session, out, published=True)
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


@on_session(TrackUnpublishRequested)
def _unpublish(
    state: State,
    seq: int,
    event: TrackUnpublishRequested,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    track = session.tracks.get(event.track_sid)
    if track is None:
        error(event, ErrorCode.TRACK_NOT_FOUND, f"no track {event.track_sid!r}", out)
        return
    drop_track(room, session, track, seq, event.at, out)
    out.append(RosterUpdate(room.id, participant_info(session), session.since_seq))
    ack(event, out)


def _mute(
    room: Room,
    session: SessionRecord,
    event: TrackMuteRequested | TrackMuteForced,
    seq: int,
    out: list[Outcome],
) -> bool:
    """Set a track's mute state as `event` asks; False (and refused) when there is none."""
    track_sid, muted = event.track_sid, event.muted
    track = session.tracks.get(track_sid)
    if track is None:
        error(event, ErrorCode.TRACK_NOT_FOUND, f"no track {track_sid!r}", out)
        return False
    if track.muted != muted:
        session.tracks[track_sid] = TrackInfo(
            sid=track.sid, kind=track.kind, source=track.source, name=track.name, muted=muted
        )
        view_changed(room, session)
        media_changed(room, session, out)
        if session.visible:
            change = TrackMuted(
                seq=seq, participant_id=session.identity, track_sid=track_sid, muted=muted
            )
            out.append(Broadcast(room.id, "speakers", change))
        out.append(RosterUpdate(room.id, participant_info(session), session.since_seq))
    return True


@on_session(TrackMuteRequested)
def _mute_track(
    state: State,
    seq: int,
    event: TrackMuteRequested,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    if _mute(room, session, event, seq, out):
        ack(event, out)


@on_participant(TrackMuteForced)
def _mute_forced(
    state: State,
    seq: int,
    event: TrackMuteForced,
    room: Room,
    session: SessionRecord,
    out: list[Outcome],
) -> None:
    if _mute(room, session, event, seq, out):
        reply(event, ParticipantReply(participant=participant_info(session)), out)


@on_session(SubscriptionRequested)
def _subscription(
    state: State,
    seq: int,
    event: SubscriptionRequested,
    room: Room,
    subscriber: SessionRecord,
    out: list[Outcome],
) -> None:
    key = (event.participant_id, event.kind)
    if not event.subscribed:
        unsubscribe(subscriber, key)
        media_changed(room, subscriber, out)
        ack(event, out)
        return
    publisher = room.session_by_identity(event.participant_id)
    if publisher is None:
        error(event, ErrorCode.PARTICIPANT_NOT_FOUND, f"no {event.participant_id!r}", out)
        return
    if publisher.is_viewer:
        error(event, ErrorCode.INVALID_PERMISSIONS, "viewers have no media", out)
        return
    refusal = refuse_subscribe(subscriber.grant)
    if refusal is not None:
        error(event, refusal.code, refusal.reason, out)
        return
    if not any(t.kind == event.kind for t in publisher.tracks.values()):
        error(
            event,
            ErrorCode.NOT_PUBLISHED,
            f"{event.participant_id!r} has no {event.kind} track",
            out,
        )
        return
    subscribe(subscriber, key)
    media_changed(room, subscriber, out, place=True)  # a subscriber needs a forwarder too
    ack(event, out)
