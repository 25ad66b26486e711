"""The forwarder service: the core `Forwarder` driven over NATS (see schemas.media).

Subjects, for a forwarder ``<id>``:

- ``forwarder_sessions(id)`` (core): `MediaSession`, the whole desired media state of one
  session here. Level-triggered: the newest state (by `seq`) is recorded and the session's
  reconcile task brings the peer connections in line with it; applying a state twice
  changes nothing, and a state older than the last one applied is ignored. A closed
  session is final (its sid never comes back).
- ``forwarder_rpc(id)`` (request/reply): `PublishOffer` -> `ForwarderSdp`;
  `SubscriberAnswer`, `MediaCandidate`, `RestartSubscription`, `RelayStop` ->
  `ForwarderOk`; `RelayStart` -> `RelayAccepted`; `RelayKeyframeRequest` (no reply).
  Every failure is answered with `schemas.client.Error` and the code of the named error.
- ``relay(id, track)`` (core): packets of tracks relayed here (`forwarder.relay`).
- ``FORWARDER_HEARTBEAT``: a `ForwarderHeartbeat` every interval; one with `stopping` last.

Peer connections are per track: a publisher connection is keyed by its track sid, a
subscriber connection by a generated id, one per (session, track).

Each session has a lock; whatever touches its connections (its reconcile, its offers,
answers, candidates and restarts) holds it, so those never interleave while sessions
proceed in parallel. Relay requests touch only the router and are answered inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from aiortc import RTCConfiguration
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from forwarder.errors import (
    Busy,
    DuplicateTrack,
    ForwarderError,
    InvalidStateError,
    ParticipantNotFound,
    SessionClosed,
    SubscriptionNotFound,
    TrackNotFound,
    TrackRetired,
)
from forwarder.node import Forwarder, SubscriberLeg, sole_media_section
from forwarder.relay import (
    RELAY_LEASE_S,
    RELAY_REFRESH_S,
    IncomingRelays,
    OutgoingRelays,
    RelayIn,
    codec_to_wire,
)
from schemas.client import Error, SignalOffer
from schemas.codec import Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.media import (
    ForwarderHeartbeat,
    ForwarderOk,
    ForwarderSdp,
    MediaCandidate,
    MediaSession,
    MediaSubscribedTrack,
    PublishOffer,
    RelayAccepted,
    RelayKeyframeRequest,
    RelayStart,
    RelayStop,
    RestartSubscription,
    SubscriberAnswer,
)
from schemas.subjects import (
    FORWARDER_HEARTBEAT,
    forwarder_rpc,
    forwarder_sessions,
    is_generated_id,
)

log = logging.getLogger("stagecast.forwarder")

SessionKey = tuple[str, str]
"""(room id, sid)"""

CLOSED_SESSIONS_KEPT = 4096
"""Closed sessions remembered, so a late older state cannot bring one back."""
STOP_TIMEOUT_S = 10.0

_SIGNALING = (PublishOffer, SubscriberAnswer, MediaCandidate, RestartSubscription)


class ServiceState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(slots=True)
class _Leg:
    """A subscriber connection carrying one track to one session."""

    subscriber_id: str
    spec: MediaSubscribedTrack
    epoch: int
    """The publication of the track it was made for (`Forwarder.epoch`)."""


class _Session:
    """What this forwarder holds for one session, and the state it should hold."""

    def __init__(self, room_id: str, sid: str) -> None:
        self.key: SessionKey = (room_id, sid)
        self.room_id = room_id
        self.sid = sid
        self.desired: MediaSession | None = None
        self.listed: set[str] = set()
        """Tracks any applied state listed: one missing from a later state is unpublished."""
        self.retired: set[str] = set()
        """Tracks unpublished that way: a late offer for one is refused."""
        self.publications: set[str] = set()
        self.legs: dict[str, _Leg] = {}
        self.wanted: set[str] = set()
        self.closed = False
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.dirty = False


class ForwarderService:
    """One forwarder on NATS: sessions' desired media in, signaling, relays, heartbeats.

    Construct with a connected client; `start()` subscribes and sends the first heartbeat
    (a readiness signal); `stop()` closes every connection and task within a bounded time
    and is idempotent. The properties are for tests and the heartbeat.
    """

    def __init__(
        self,
        nc: NATS,
        forwarder_id: str,
        *,
        heartbeat_interval: float = 1.0,
        configuration: RTCConfiguration | None = None,
        relay_give_up: float = 30.0,
        relay_refresh: float = RELAY_REFRESH_S,
        relay_lease: float = RELAY_LEASE_S,
        request_timeout: float = 2.0,
        max_requests: int = 256,
    ) -> None:
        if not is_generated_id(forwarder_id):
            raise ValueError(f"a forwarder id is [A-Za-z0-9_-]+, not {forwarder_id!r}")
        self.nc = nc
        self.forwarder_id = forwarder_id
        self.forwarder = Forwarder(configuration=configuration)
        self.heartbeat_interval = heartbeat_interval
        self._request_timeout = request_timeout
        self._max_requests = max_requests
        self.state = ServiceState.NEW
        self._sessions: dict[SessionKey, _Session] = {}
        self._closed_sessions: OrderedDict[SessionKey, int] = OrderedDict()
        self._owners: dict[str, SessionKey] = {}
        self._wanted: dict[str, set[SessionKey]] = {}
        self._relays_in = IncomingRelays(
            nc,
            self.forwarder,
            forwarder_id=forwarder_id,
            on_change=self._kick_wanting,
            refresh_interval=relay_refresh,
            give_up_after=relay_give_up,
            request_timeout=request_timeout,
        )
        self._relays_out = OutgoingRelays(nc, self.forwarder.router, lease=relay_lease)
        self._requests: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._next_subscriber = 0
        self._counted_at = time.monotonic()
        self._counted_packets = 0
        self.sessions_ignored = 0
        """`MediaSession` messages ignored: malformed, stale, or for a closed session."""

    # ------------------------------------------------------------------ introspection

    @property
    def peer_connections(self) -> int:
        return len(self.forwarder.peer_connections)

    @property
    def published_tracks(self) -> list[str]:
        """Tracks whose publisher connection is on this forwarder."""
        return list(self._owners)

    @property
    def relays_out(self) -> list[tuple[str, str]]:
        """(track sid, downstream forwarder) of every relay this forwarder sends."""
        return self._relays_out.keys

    @property
    def relays_in(self) -> dict[str, RelayIn]:
        """Relays this forwarder receives, by track sid."""
        return self._relays_in.by_track

    @property
    def sessions(self) -> list[SessionKey]:
        return list(self._sessions)

    def subscriber_leg(self, room_id: str, sid: str, track_sid: str) -> SubscriberLeg:
        """The core leg carrying `track_sid` to a session (its stream, its state)."""
        session = self._sessions.get((room_id, sid))
        leg = session.legs.get(track_sid) if session is not None else None
        if leg is None:
            raise SubscriptionNotFound(sid, track_sid)
        return self.forwarder.legs(leg.subscriber_id)[track_sid]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to the sessions and rpc subjects, then send the first heartbeat."""
        if self.state is not ServiceState.NEW:
            raise InvalidStateError("start", self.state.value)
        self.state = ServiceState.RUNNING
        self._subs.append(
            await self.nc.subscribe(forwarder_sessions(self.forwarder_id), cb=self._on_session)
        )
        self._subs.append(
            await self.nc.subscribe(forwarder_rpc(self.forwarder_id), cb=self._on_rpc)
        )
        await self.nc.flush(timeout=max(1, round(self._request_timeout)))
        await self._send_heartbeat()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="forwarder heartbeat")
        log.info("forwarder %s started", self.forwarder_id)

    async def stop(self) -> None:
        """Close every connection, relay and task (bounded in time); announce `stopping`."""
        if self.state in (ServiceState.STOPPING, ServiceState.STOPPED):
            return
        self.state = ServiceState.STOPPING
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        tasks = [t for t in (self._heartbeat, *self._requests) if t is not None]
        tasks += [s.task for s in self._sessions.values() if s.task is not None]
        await _cancel(tasks)
        # a polite RelayStop each; the origins' leases cover whatever does not arrive
        await self._relays_in.close()
        self._relays_out.clear()
        try:
            await asyncio.wait_for(self.forwarder.close(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("closing the peer connections took over %.0f s", STOP_TIMEOUT_S)
        await self._send_heartbeat(stopping=True)
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        self.state = ServiceState.STOPPED
        log.info("forwarder %s stopped", self.forwarder_id)

    # ------------------------------------------------------------------ desired state

    async def _on_session(self, msg: Msg) -> None:
        try:
            desired = decode(msg.data)
        except SchemaError as exc:
            self.sessions_ignored += 1
            log.warning("unreadable MediaSession on %s: %s", msg.subject, exc)
            return
        if not isinstance(desired, MediaSession):
            self.sessions_ignored += 1
            log.warning("%s on %s (expected a MediaSession)", desired.TYPE, msg.subject)
            return
        try:
            self.apply(desired)
        except Exception:
            log.exception("applying the MediaSession of %s failed", desired.sid)

    def apply(self, desired: MediaSession) -> bool:
        """Record a session's desired state and schedule its reconcile; False if ignored."""
        key = (desired.room_id, desired.sid)
        session = self._sessions.get(key)
        stale = key in self._closed_sessions or (
            session is not None
            and (
                session.closed
                or (session.desired is not None and desired.seq < session.desired.seq)
            )
        )
        if stale or self.state is not ServiceState.RUNNING:
            self.sessions_ignored += 1
            return False
        if not desired.closed and not _usable_subject(desired.subject):
            self.sessions_ignored += 1
            log.warning("session %s: unusable subject %r", desired.sid, desired.subject[:80])
            return False
        if session is None:
            session = self._sessions[key] = _Session(desired.room_id, desired.sid)
        session.desired = desired
        session.closed = desired.closed
        session.listed.update(track.track_sid for track in desired.tracks)
        wanted = set() if desired.closed else {s.track_sid for s in desired.subscriptions}
        self._set_wanted(session, wanted)
        for spec in desired.subscriptions if not desired.closed else ():
            if spec.forwarder_id != self.forwarder_id and spec.track_sid not in self._owners:
                self._relays_in.ensure(
                    spec.track_sid, origin_id=spec.forwarder_id, room_id=desired.room_id
                )
        self._kick(session)
        return True

    def _set_wanted(self, session: _Session, wanted: set[str]) -> None:
        for track_sid in wanted - session.wanted:
            self._wanted.setdefault(track_sid, set()).add(session.key)
        for track_sid in session.wanted - wanted:
            holders = self._wanted.get(track_sid, set())
            holders.discard(session.key)
            if not holders:
                self._wanted.pop(track_sid, None)
                self._relays_in.stop(track_sid, notify_origin=True)
        session.wanted = wanted

    def _kick(self, session: _Session) -> None:
        """Reconcile the session soon (once, however many times it is kicked meanwhile)."""
        session.dirty = True
        if self.state is ServiceState.RUNNING and (session.task is None or session.task.done()):
            session.task = asyncio.create_task(
                self._reconcile_loop(session), name=f"reconcile {session.sid}"
            )

    def _kick_wanting(self, track_sid: str) -> None:
        for key in self._wanted.get(track_sid, ()):
            session = self._sessions.get(key)
            if session is not None:
                self._kick(session)

    async def _reconcile_loop(self, session: _Session) -> None:
        while session.dirty:
            session.dirty = False
            async with session.lock:
                try:
                    await self._reconcile(session)
                except Exception:
                    log.exception("reconciling session %s failed", session.sid)

    async def _reconcile(self, session: _Session) -> None:
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

    async def _serve(self, session: _Session, spec: MediaSubscribedTrack) -> None:
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
        session.legs[track_sid] = _Leg(subscriber_id, spec, epoch)
        await self._send_offer(session, spec, offer)

    async def _send_offer(self, session: _Session, spec: MediaSubscribedTrack, sdp: str) -> None:
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

    async def _close_leg(self, session: _Session, track_sid: str) -> None:
        leg = session.legs.pop(track_sid, None)
        if leg is not None:
            with contextlib.suppress(ParticipantNotFound):
                await self.forwarder.remove_subscriber(leg.subscriber_id)

    async def _unpublish(self, session: _Session, track_sid: str) -> None:
        """Close a publisher connection; its legs and outgoing relays go with it."""
        session.publications.discard(track_sid)
        self._owners.pop(track_sid, None)
        self._relays_out.forget_track(track_sid)
        with contextlib.suppress(ParticipantNotFound):
            await self.forwarder.remove_publisher(track_sid)
        self._kick_wanting(track_sid)

    async def _drop_session(self, session: _Session) -> None:
        for track_sid in list(session.legs):
            await self._close_leg(session, track_sid)
        for track_sid in list(session.publications):
            await self._unpublish(session, track_sid)
        self._set_wanted(session, set())
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        seq = session.desired.seq if session.desired is not None else -1
        self._closed_sessions[session.key] = seq
        while len(self._closed_sessions) > CLOSED_SESSIONS_KEPT:
            self._closed_sessions.popitem(last=False)

    # ------------------------------------------------------------------ rpc

    async def _on_rpc(self, msg: Msg) -> None:
        try:
            request = decode(msg.data)
        except SchemaError as exc:
            await self._reply(msg, Error(code=exc.code.value, message=str(exc)))
            return
        if isinstance(request, _SIGNALING):
            if len(self._requests) >= self._max_requests:
                await self._reply(msg, _error(Busy(self._max_requests)))
                return
            task = asyncio.create_task(self._answer_later(msg, request))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            return
        try:
            reply = self._answer_relay(request)
        except Exception as exc:
            reply = _error(exc)
        if reply is not None:
            await self._reply(msg, reply)

    async def _answer_later(self, msg: Msg, request: Message) -> None:
        try:
            reply = await self._answer_signaling(request)
        except Exception as exc:
            reply = _error(exc)
        await self._reply(msg, reply)

    async def _reply(self, msg: Msg, reply: Message) -> None:
        if not msg.reply:
            return
        try:
            await self.nc.publish(msg.reply, encode(reply))
        except Exception as exc:
            log.warning("a reply on %s was not sent: %r", msg.subject, exc)

    async def _answer_signaling(self, request: Message) -> Message:
        if isinstance(request, PublishOffer):
            return ForwarderSdp(sdp=await self._publish_offer(request))
        if isinstance(request, SubscriberAnswer):
            session = self._existing_session(request.room_id, request.sid)
            async with session.lock:
                leg = _leg_of(session, request.track_sid)
                await self.forwarder.set_subscriber_answer(leg.subscriber_id, request.sdp)
            return ForwarderOk()
        if isinstance(request, MediaCandidate):
            await self._add_candidate(request)
            return ForwarderOk()
        if isinstance(request, RestartSubscription):
            session = self._existing_session(request.room_id, request.sid)
            async with session.lock:
                spec = _leg_of(session, request.track_sid).spec
                await self._close_leg(session, request.track_sid)
                if self._available(spec):
                    await self._serve(session, spec)
            return ForwarderOk()
        raise AssertionError(f"not a signaling request: {request.TYPE}")

    async def _publish_offer(self, request: PublishOffer) -> str:
        """A publisher connection for one track, or its replacement; the SDP answer."""
        track_sid = request.track_sid
        mid = sole_media_section(request.sdp, request.kind)
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
                return replaced.answer_sdp
            answer = await self.forwarder.add_publisher(
                request.sdp, publisher_id=track_sid, track_ids={mid: track_sid}
            )
            self._owners[track_sid] = session.key
            session.publications.add(track_sid)
            desired = session.desired
            for track in desired.tracks if desired is not None else ():
                if track.track_sid == track_sid:
                    self.forwarder.set_muted(track_sid, track.muted)
        self._kick_wanting(track_sid)
        return answer.answer_sdp

    async def _add_candidate(self, request: MediaCandidate) -> None:
        session = self._existing_session(request.room_id, request.sid)
        async with session.lock:
            if request.target == "publisher":
                if request.track_sid not in session.publications:
                    raise TrackNotFound(request.track_sid)
                peer_id = request.track_sid
            else:
                peer_id = _leg_of(session, request.track_sid).subscriber_id
            await self.forwarder.add_ice_candidate(
                peer_id,
                request.candidate,
                publisher=request.target == "publisher",
                sdp_mid=request.sdp_mid,
                sdp_mline_index=request.sdp_mline_index,
            )

    def _session_for_offer(self, room_id: str, sid: str) -> _Session:
        """The session an offer belongs to, made now if its first state has not come yet."""
        key = (room_id, sid)
        if key in self._closed_sessions:
            raise SessionClosed(sid)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session(room_id, sid)
        return session

    def _existing_session(self, room_id: str, sid: str) -> _Session:
        key = (room_id, sid)
        if key in self._closed_sessions:
            raise SessionClosed(sid)
        session = self._sessions.get(key)
        if session is None:
            raise ParticipantNotFound(sid)
        return session

    def _answer_relay(self, request: Message) -> Message | None:
        """Relay control, answered inline: it touches only the router."""
        if isinstance(request, RelayKeyframeRequest):
            if request.track_sid in self._owners:
                self.forwarder.router.request_keyframe(request.track_sid)
            return None
        if isinstance(request, RelayStart):
            return self._relay_start(request)
        if isinstance(request, RelayStop):
            self._relays_out.stop((request.track_sid, request.to_forwarder))
            return ForwarderOk()
        return Error(
            code=ErrorCode.UNKNOWN_TYPE.value,
            message=f"a forwarder does not answer {request.TYPE}",
        )

    def _relay_start(self, request: RelayStart) -> RelayAccepted:
        track_sid = request.track_sid
        if track_sid not in self._owners:
            raise TrackNotFound(track_sid)
        now = asyncio.get_running_loop().time()
        self._relays_out.renew(track_sid, request.to_forwarder, now)
        return RelayAccepted(codec=codec_to_wire(self.forwarder.router.codec(track_sid)))

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self._relays_out.expire(asyncio.get_running_loop().time())
            await self._send_heartbeat()

    async def _send_heartbeat(self, *, stopping: bool = False) -> None:
        now = time.monotonic()
        forwarded = self.forwarder.router.packets_forwarded
        elapsed = max(now - self._counted_at, 1e-3)
        rate = max(forwarded - self._counted_packets, 0) / elapsed
        self._counted_at, self._counted_packets = now, forwarded
        heartbeat = ForwarderHeartbeat(
            forwarder_id=self.forwarder_id,
            at=int(time.time() * 1000),
            peer_connections=self.peer_connections,
            published_tracks=len(self._owners),
            legs=self.forwarder.router.leg_count,
            packets_per_s=round(rate),
            interval_ms=round(self.heartbeat_interval * 1000),
            stopping=stopping,
        )
        try:
            await self.nc.publish(FORWARDER_HEARTBEAT, encode(heartbeat))
        except Exception as exc:
            log.warning("heartbeat not sent: %r", exc)


def _leg_of(session: _Session, track_sid: str) -> _Leg:
    leg = session.legs.get(track_sid)
    if leg is None:
        raise SubscriptionNotFound(session.sid, track_sid)
    return leg


def _error(exc: Exception) -> Error:
    """The `Error` reply for a failed request: the named error's code, or INTERNAL."""
    if isinstance(exc, ForwarderError | SchemaError):
        return Error(code=exc.code.value, message=str(exc))
    if isinstance(exc, ValueError):  # an id that cannot form a subject
        return Error(code=ErrorCode.BAD_REQUEST.value, message=str(exc))
    log.error("request failed", exc_info=exc)
    return Error(code=ErrorCode.INTERNAL.value, message=type(exc).__name__)


def _usable_subject(subject: str) -> bool:
    """Whether `subject` can be published to (no wildcard, no empty token, no space)."""
    tokens = subject.split(".")
    return bool(subject) and all(
        token and token not in ("*", ">") and not any(c.isspace() for c in token)
        for token in tokens
    )


async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        _done, still = await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)
        for task in still:
            log.error("task %s did not stop in time", task.get_name())
