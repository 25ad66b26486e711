"""The media sessions one forwarder serves: desired state in, peer connections reconciled.

A `MediaSession` is the whole desired media state of one session here. Level-triggered:
the newest state (by `seq`) is recorded and the session's reconcile task brings the peer
connections in line with it; applying a state twice changes nothing, and a state older
than the last one applied is ignored. A closed session is final (its sid never comes back).

Peer connections are per track: a publisher connection is keyed by its track sid, a
subscriber connection by a generated id, one per (session, track). A subscription to a
track published on another forwarder is relayed here (`forwarder.relay_in`).

Each session has a lock; whatever touches its connections (its reconcile, its offers,
answers, candidates and restarts) holds it, so those never interleave while sessions
proceed in parallel. `forwarder.service` is the NATS shell around this.

Over 500 lines: the reconcile of one session's desired state and the signaling requests
that change it (offers, answers, candidates, restarts, layer announcements) are one
level-triggered loop under one lock per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence

from nats.aio.client import Client as NATS

from forwarder.errors import (
    DuplicateSession,
    DuplicateTrack,
    ForwarderError,
    InvalidSdp,
    ParticipantNotFound,
    SessionClosed,
    SubscriptionNotFound,
    TrackNotFound,
    TrackRetired,
)
from forwarder.ingress import INGRESS_CONNECT_TIMEOUT_S, IngressWatch, ingress_key
from forwarder.layer_signals import LayerSignals
from forwarder.layers import LayerSpec, announced_layers
from forwarder.negotiation import sole_media_section
from forwarder.node import Forwarder, SubscriberLeg
from forwarder.relay import RELAY_REFRESH_S
from forwarder.relay_in import IncomingRelays, RelayIn
from forwarder.relay_out import OutgoingRelays
from forwarder.served import ServedLeg, ServedSession, SessionKey, leg_of, usable_subject
from forwarder.voice import RoomVoices
from schemas.client import PublishedLayer, SignalOffer
from schemas.codec import Message, encode
from schemas.media import (
    ForwarderOk,
    ForwarderSdp,
    IngressOffer,
    MediaCandidate,
    MediaSession,
    MediaSubscribedTrack,
    PublisherLayers,
    PublishOffer,
    RestartSubscription,
    SubscriberAnswer,
    SubscriberLayers,
)

log = logging.getLogger("stagecast.forwarder")

CLOSED_SESSIONS_KEPT = 4096
"""Closed sessions remembered, so a late older state cannot bring one back."""

SIGNALING_REQUESTS = (
    PublishOffer,
    IngressOffer,
    SubscriberAnswer,
    MediaCandidate,
    RestartSubscription,
    SubscriberLayers,
    PublisherLayers,
)
"""The requests `MediaSessions.answer` takes: each holds its session's lock."""


class MediaSessions:
    """The sessions of one forwarder: their desired state, reconciled, and their signaling.

    `apply` records a session's newest `MediaSession` and schedules its reconcile;
    `answer` handles one of the `SIGNALING_REQUESTS`. New reconcile tasks start only while
    `running` (the service sets it); `tasks` are those to cancel when stopping, and
    `close_relays()` closes the relays received. Peer connections are the `Forwarder`'s
    to close.
    """

    def __init__(
        self,
        nc: NATS,
        forwarder: Forwarder,
        relays_out: OutgoingRelays,
        *,
        forwarder_id: str,
        relay_refresh: float = RELAY_REFRESH_S,
        relay_give_up: float = 30.0,
        request_timeout: float = 2.0,
        ingress_connect_timeout: float = INGRESS_CONNECT_TIMEOUT_S,
    ) -> None:
        self.nc = nc
        self.forwarder = forwarder
        self.forwarder_id = forwarder_id
        self.voices = RoomVoices(forwarder_id)
        """The audio tracks published here by room (their speakers are reported)."""
        forwarder.on_audio_level = self.voices.observe
        self.layers = LayerSignals(
            nc,
            forwarder,
            publisher_subject=self._publisher_subject,
            session_subject=self._session_subject,
        )
        """Simulcast quality wishes in, dynacast out (`forwarder.layer_signals`)."""
        self.running = False
        self._sessions: dict[SessionKey, ServedSession] = {}
        self._closed_sessions: OrderedDict[SessionKey, int] = OrderedDict()
        self._owners: dict[str, SessionKey] = {}
        self._publisher_keys: dict[str, str] = {}
        """The connection of each track published on a shared one (an ingress session's)."""
        self.ingress = IngressWatch(nc, ingress_connect_timeout)
        self._wanted: dict[str, set[SessionKey]] = {}
        self._relays_in = IncomingRelays(
            nc,
            forwarder,
            forwarder_id=forwarder_id,
            on_change=self._kick_wanting,
            refresh_interval=relay_refresh,
            give_up_after=relay_give_up,
            request_timeout=request_timeout,
        )
        self._relays_out = relays_out
        self._next_subscriber = 0

    @property
    def keys(self) -> list[SessionKey]:
        return list(self._sessions)

    @property
    def published_tracks(self) -> list[str]:
        """Tracks whose publisher connection is on this forwarder."""
        return list(self._owners)

    def publishes(self, track_sid: str) -> bool:
        """Whether the publisher connection of `track_sid` is on this forwarder."""
        return track_sid in self._owners

    @property
    def relays_in(self) -> dict[str, RelayIn]:
        """Relays this forwarder receives, by track sid."""
        return self._relays_in.by_track

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The sessions' reconcile tasks (done or not), and the ingress notices."""
        reconciles = [s.task for s in self._sessions.values() if s.task is not None]
        return reconciles + list(self.ingress.tasks)

    async def close_relays(self) -> None:
        """Close every relay received (a `RelayStop` to each origin, bounded in time)."""
        self.layers.close()
        await self._relays_in.close()

    def _publisher_subject(self, track_sid: str) -> str | None:
        """The direct subject of the session publishing `track_sid` here."""
        owner = self._sessions.get(self._owners.get(track_sid, ("", "")))
        return owner.desired.subject if owner is not None and owner.desired else None

    def _session_subject(self, room_id: str, sid: str) -> str | None:
        """The direct subject of a session served here (None once it is gone)."""
        session = self._sessions.get((room_id, sid))
        return session.desired.subject if session is not None and session.desired else None

    def subscriber_leg(self, room_id: str, sid: str, track_sid: str) -> SubscriberLeg:
        """The core leg carrying `track_sid` to a session (its stream, its state)."""
        session = self._sessions.get((room_id, sid))
        leg = session.legs.get(track_sid) if session is not None else None
        if leg is None:
            raise SubscriptionNotFound(sid, track_sid)
        return self.forwarder.legs(leg.subscriber_id)[track_sid]

    # ------------------------------------------------------------------ desired state

    def apply(self, desired: MediaSession) -> bool:
        """Record a session's desired state and schedule its reconcile; False if ignored.

        Ignored: a state older than the last one applied, one for a closed session, or
        one whose subject cannot be published to.
        """
        key = (desired.room_id, desired.sid)
        session = self._sessions.get(key)
        stale = key in self._closed_sessions or (
            session is not None
            and (
                session.closed
                or (session.desired is not None and desired.seq < session.desired.seq)
            )
        )
        if stale:
            return False
        if not desired.closed and not usable_subject(desired.subject):
            log.warning("session %s: unusable subject %r", desired.sid, desired.subject[:80])
            return False
        if session is None:
            session = self._sessions[key] = ServedSession(desired.room_id, desired.sid)
        session.desired = desired
        session.closed = desired.closed
        session.listed.update(track.track_sid for track in desired.tracks)
        wanted = set() if desired.closed else {s.track_sid for s in desired.subscriptions}
        self._set_wanted(session, wanted)
        for spec in desired.subscriptions if not desired.closed else ():
            if spec.forwarder_id == self.forwarder_id:
                self._stop_relay_of_local(spec.track_sid)
            elif spec.track_sid not in self._owners:
                self._relays_in.ensure(
                    spec.track_sid, origin_id=spec.forwarder_id, room_id=desired.room_id
                )
        self._kick(session)
        return True

    def _stop_relay_of_local(self, track_sid: str) -> None:
        """`track_sid`'s publisher is placed here now (it moved off a forwarder that died,
        from which this one relayed it): the relay goes, so that the publisher's offer can
        publish the track here and the legs follow it (nothing if it is not relayed)."""
        self._relays_in.stop(track_sid, notify_origin=True)

    def _set_wanted(self, session: ServedSession, wanted: set[str]) -> None:
        for track_sid in wanted - session.wanted:
            self._wanted.setdefault(track_sid, set()).add(session.key)
        for track_sid in session.wanted - wanted:
            holders = self._wanted.get(track_sid, set())
            holders.discard(session.key)
            if not holders:
                self._wanted.pop(track_sid, None)
                self._relays_in.stop(track_sid, notify_origin=True)
        session.wanted = wanted

    def _kick(self, session: ServedSession) -> None:
        """Reconcile the session soon (once, however many times it is kicked meanwhile)."""
        session.dirty = True
        if self.running and (session.task is None or session.task.done()):
            session.task = asyncio.create_task(
                self._reconcile_loop(session), name=f"reconcile {session.sid}"
            )

    def _kick_wanting(self, track_sid: str) -> None:
        for key in self._wanted.get(track_sid, ()):
            session = self._sessions.get(key)
            if session is not None:
                self._kick(session)

    async def _reconcile_loop(self, session: ServedSession) -> None:
        while session.dirty:
            session.dirty = False
            async with session.lock:
                try:
                    await self._reconcile(session)
                except Exception:
                    log.exception("reconciling session %s failed", session.sid)

    async def _reconcile(self, session: ServedSession) -> None:
        desired = session.desired
        if session.closed:
            await self._drop_session(session)
            return
        if desired is None:
            return  # only an offer so far
        tracks = {track.track_sid: track for track in desired.tracks}
        for track_sid in list(session.publications):
            state = tracks.get(track_sid)
            if state is not None:
                self.forwarder.set_muted(track_sid, state.muted)
                if state.kind == "audio":
                    self.voices.publish(
                        track_sid, session.room_id, desired.identity, muted=state.muted
                    )
            elif track_sid in session.listed:
                await self._unpublish(session, track_sid)
                session.retired.add(track_sid)
        subscriptions = {spec.track_sid: spec for spec in desired.subscriptions}
        for track_sid, leg in list(session.legs.items()):
            spec = subscriptions.get(track_sid)
            if spec != leg.spec or self.forwarder.epoch(track_sid) != leg.epoch:
                await self._close_leg(session, track_sid)
        for track_sid, spec in subscriptions.items():
            if track_sid not in session.legs and self._available(spec):
                try:
                    await self._serve(session, spec)
                except ForwarderError as exc:  # the others are still served; retried on a kick
                    log.warning("session %s: serving %s failed: %s", session.sid, track_sid, exc)

    def _available(self, spec: MediaSubscribedTrack) -> bool:
        """Whether the track can be served here now (published, or relayed and active)."""
        if spec.forwarder_id == self.forwarder_id:
            return spec.track_sid in self._owners
        return self._relays_in.active(spec.track_sid, spec.forwarder_id)

    async def _serve(self, session: ServedSession, spec: MediaSubscribedTrack) -> None:
        """Make the subscriber connection for one track and push its offer to the client."""
        track_sid = spec.track_sid
        epoch = self.forwarder.epoch(track_sid)
        if epoch is None:
            return
        self._next_subscriber += 1
        subscriber_id = f"S{self._next_subscriber}"
        offer = await self.forwarder.add_subscriber(subscriber_id, [track_sid])
        if self.forwarder.epoch(track_sid) != epoch:  # unpublished while negotiating
            await self.forwarder.remove_subscriber(subscriber_id)
            self._kick(session)
            return
        session.legs[track_sid] = ServedLeg(subscriber_id, spec, epoch)
        self.layers.apply(session.room_id, session.sid, track_sid, subscriber_id)
        await self._send_offer(session, spec, offer)

    async def _send_offer(
        self, session: ServedSession, spec: MediaSubscribedTrack, sdp: str
    ) -> None:
        assert session.desired is not None
        offer = SignalOffer(
            id=0,
            target="subscriber",
            sdp=sdp,
            track_sid=spec.track_sid,
            participant_id=spec.publisher_id,
            kind=spec.kind,
        )
        try:
            await self.nc.publish(session.desired.subject, encode(offer))
        except Exception as exc:  # the client asks again with RestartSubscription
            log.warning(
                "session %s: the offer for %s was not sent: %r", session.sid, spec.track_sid, exc
            )

    async def _close_leg(self, session: ServedSession, track_sid: str) -> None:
        leg = session.legs.pop(track_sid, None)
        if leg is not None:
            self.layers.leg_closed(leg.subscriber_id)
            with contextlib.suppress(ParticipantNotFound):
                await self.forwarder.remove_subscriber(leg.subscriber_id)

    async def _unpublish(self, session: ServedSession, track_sid: str) -> None:
        """Close a publisher connection; its legs and outgoing relays go with it."""
        session.publications.discard(track_sid)
        self.voices.unpublish(track_sid)
        self._owners.pop(track_sid, None)
        self._relays_out.forget_track(track_sid)
        publisher_key = self._publisher_keys.pop(track_sid, track_sid)
        with contextlib.suppress(ParticipantNotFound):  # a shared one: closed with the first
            await self.forwarder.remove_publisher(publisher_key)
        self._kick_wanting(track_sid)

    async def _drop_session(self, session: ServedSession) -> None:
        self.ingress.forget(session.key)
        for track_sid in list(session.legs):
            await self._close_leg(session, track_sid)
        for track_sid in list(session.publications):
            await self._unpublish(session, track_sid)
        self._set_wanted(session, set())
        self.layers.forget(session.room_id, session.sid)
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        seq = session.desired.seq if session.desired is not None else -1
        self._closed_sessions[session.key] = seq
        while len(self._closed_sessions) > CLOSED_SESSIONS_KEPT:
            self._closed_sessions.popitem(last=False)

    # ------------------------------------------------------------------ signaling

    async def answer(self, request: Message) -> Message:
        """The reply to one of the `SIGNALING_REQUESTS` (a named error raised otherwise)."""
        if isinstance(request, PublishOffer):
            return ForwarderSdp(sdp=await self._publish_offer(request))
        if isinstance(request, IngressOffer):
            return ForwarderSdp(sdp=await self._ingress_offer(request))
        if isinstance(request, SubscriberAnswer):
            session = self._existing_session(request.room_id, request.sid)
            async with session.lock:
                leg = leg_of(session, request.track_sid)
                await self.forwarder.set_subscriber_answer(leg.subscriber_id, request.sdp)
            return ForwarderOk()
        if isinstance(request, MediaCandidate):
            await self._add_candidate(request)
            return ForwarderOk()
        if isinstance(request, SubscriberLayers):
            session = self._existing_session(request.room_id, request.sid)
            async with session.lock:
                serving = session.legs.get(request.track_sid)
                self.layers.wish(request, serving.subscriber_id if serving else None)
            return ForwarderOk()
        if isinstance(request, PublisherLayers):
            layers = _announced(request.layers)
            session = self._existing_session(request.room_id, request.sid)
            async with session.lock:
                if request.track_sid not in session.publications:
                    raise TrackNotFound(request.track_sid)
                self.forwarder.announce_layers(request.track_sid, layers)
            return ForwarderOk()
        if isinstance(request, RestartSubscription):
            session = self._existing_session(request.room_id, request.sid)
            async with session.lock:
                spec = leg_of(session, request.track_sid).spec
                await self._close_leg(session, request.track_sid)
                if self._available(spec):
                    await self._serve(session, spec)
            return ForwarderOk()
        raise AssertionError(f"not a signaling request: {request.TYPE}")

    async def _publish_offer(self, request: PublishOffer) -> str:
        """A publisher connection for one track, or its replacement; the SDP answer."""
        track_sid = request.track_sid
        mid = sole_media_section(request.sdp, request.kind)
        layers = _announced(request.layers or ())
        session = self._session_for_offer(request.room_id, request.sid)
        async with session.lock:
            if session.closed:
                raise SessionClosed(request.sid)
            if track_sid in session.retired:
                raise TrackRetired(track_sid)
            owner = self._owners.get(track_sid)
            if owner is not None and owner != session.key:
                raise DuplicateTrack(track_sid)
            if owner is not None:  # ICE restart, network change, or just a second offer
                replaced = await self.forwarder.replace_publisher(
                    track_sid, request.sdp, track_ids={mid: track_sid}
                )
                if request.layers is not None:
                    self.forwarder.announce_layers(track_sid, layers)
                return replaced.answer_sdp
            self._stop_relay_of_local(track_sid)  # its publisher moved here
            answer = await self.forwarder.add_publisher(
                request.sdp, publisher_key=track_sid, track_ids={mid: track_sid}
            )
            self.forwarder.announce_layers(track_sid, layers)
            self._published(session, track_sid)
        self._kick_wanting(track_sid)
        return answer.answer_sdp

    async def _ingress_offer(self, request: IngressOffer) -> str:
        """One publisher connection for every track of a WHIP client; the SDP answer.

        A session has one ingress connection; a second offer is `DuplicateSession` (WHIP
        clients start a new session instead). Each m-line must be one listed in the
        request, with the listed kind."""
        if not usable_subject(request.subject):
            raise ValueError(f"unusable subject {request.subject[:80]!r}")
        track_ids = {track.mid: track.track_sid for track in request.tracks}
        session = self._session_for_offer(request.room_id, request.sid)
        key = ingress_key(request.sid)
        async with session.lock:
            if session.closed:
                raise SessionClosed(request.sid)
            if session.publications:
                raise DuplicateSession(key)
            for track in request.tracks:
                if track.track_sid in session.retired:
                    raise TrackRetired(track.track_sid)
                if track.track_sid in self._owners:
                    raise DuplicateTrack(track.track_sid)
            on_state = self.ingress.watch(
                request.room_id,
                request.sid,
                request.subject,
                lambda: self.forwarder.connection_state(key),
            )
            try:
                answer = await self.forwarder.add_publisher(
                    request.sdp,
                    publisher_key=key,
                    track_ids=track_ids,
                    on_state=on_state,
                    dtls_server=True,
                )
            except BaseException:
                self.ingress.forget(session.key)
                raise
            kinds = {track.track_sid: track.kind for track in request.tracks}
            published = {track.track_id: track.kind for track in answer.tracks}
            if published != kinds:
                self.ingress.forget(session.key)
                await self.forwarder.remove_publisher(key)
                raise InvalidSdp("offer", f"its media sections are not the tracks {kinds}")
            for track_sid in published:
                self._publisher_keys[track_sid] = key
                self._published(session, track_sid)
        for track_sid in published:
            self._kick_wanting(track_sid)
        return answer.answer_sdp

    def _published(self, session: ServedSession, track_sid: str) -> None:
        """A publisher connection now carries `track_sid`: own it, apply its mute state."""
        self._owners[track_sid] = session.key
        session.publications.add(track_sid)
        desired = session.desired
        if desired is None:
            return  # its state applies it when it comes
        for track in desired.tracks:
            if track.track_sid == track_sid:
                self.forwarder.set_muted(track_sid, track.muted)
                if track.kind == "audio":
                    self.voices.publish(
                        track_sid, session.room_id, desired.identity, muted=track.muted
                    )

    async def _add_candidate(self, request: MediaCandidate) -> None:
        session = self._existing_session(request.room_id, request.sid)
        async with session.lock:
            if request.target == "publisher":
                if request.track_sid not in session.publications:
                    raise TrackNotFound(request.track_sid)
                peer_id = self._publisher_keys.get(request.track_sid, request.track_sid)
            else:
                peer_id = leg_of(session, request.track_sid).subscriber_id
            await self.forwarder.add_ice_candidate(
                peer_id,
                request.candidate,
                publisher=request.target == "publisher",
                sdp_mid=request.sdp_mid,
                sdp_mline_index=request.sdp_mline_index,
            )

    def _session_for_offer(self, room_id: str, sid: str) -> ServedSession:
        """The session an offer belongs to, made now if its first state has not come yet."""
        key = (room_id, sid)
        if key in self._closed_sessions:
            raise SessionClosed(sid)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = ServedSession(room_id, sid)
        return session

    def _existing_session(self, room_id: str, sid: str) -> ServedSession:
        key = (room_id, sid)
        if key in self._closed_sessions:
            raise SessionClosed(sid)
        session = self._sessions.get(key)
        if session is None:
            raise ParticipantNotFound(sid)
        return session


def _announced(layers: Sequence[PublishedLayer]) -> tuple[LayerSpec, ...] | None:
    """A publisher's announced layers, checked (named errors); None for an empty list."""
    if not layers:
        return None
    return announced_layers((x.rid, x.width, x.height, x.max_bitrate) for x in layers)
