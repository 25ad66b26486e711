"""The forwarder service: the core `Forwarder` driven over NATS (see schemas.media).

Subjects, for a forwarder ``<id>``:

- ``forwarder_sessions(id)`` (core): `MediaSession`, the whole desired media state of one
  session here, applied by `forwarder.sessions` (level-triggered, newest `seq` wins, a
  closed session is final).
- ``forwarder_rpc(id)`` (request/reply): `PublishOffer` -> `ForwarderSdp`;
  `SubscriberAnswer`, `MediaCandidate`, `RestartSubscription`, `RelayStop` ->
  `ForwarderOk`; `RelayStart` -> `RelayAccepted`; `RelayKeyframeRequest` (no reply).
  Every failure is answered with `schemas.client.Error` and the code of the named error.
- ``relay(id, track)`` (core): packets of tracks relayed here (`forwarder.relay`).
- ``FORWARDER_HEARTBEAT``: a `ForwarderHeartbeat` every interval; one with `stopping` last.
- ``room_voice(room)`` (core): `SpeakerReport`, who is talking among the room's audio
  published here (`forwarder.voice`), on change at most every 250 ms, refreshed each second.

Signaling requests are answered in their own tasks (bounded by `max_requests`) under
their session's lock (`forwarder.sessions`). Relay requests touch only the router and are
answered inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterable

from aiortc import RTCConfiguration
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from forwarder.errors import (
    Busy,
    ForwarderError,
    InvalidStateError,
    TrackNotFound,
)
from forwarder.ingress import IngressWatch
from forwarder.node import Forwarder, SubscriberLeg
from forwarder.relay import RELAY_LEASE_S, RELAY_REFRESH_S, codec_to_wire
from forwarder.relay_in import RelayIn
from forwarder.relay_out import OutgoingRelays
from forwarder.served import SessionKey
from forwarder.sessions import SIGNALING_REQUESTS, MediaSessions
from forwarder.voice import RoomVoices
from schemas.client import Error
from schemas.clock import now_ms
from schemas.codec import Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.media import (
    VOICE_REPORT_INTERVAL_MS,
    ForwarderHeartbeat,
    ForwarderOk,
    MediaSession,
    RelayAccepted,
    RelayKeyframeRequest,
    RelayStart,
    RelayStop,
)
from schemas.subjects import (
    FORWARDER_HEARTBEAT,
    forwarder_rpc,
    forwarder_sessions,
    is_generated_id,
    room_voice,
)

log = logging.getLogger("stagecast.forwarder")

STOP_TIMEOUT_S = 10.0


class ServiceState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


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
        self._relays_out = OutgoingRelays(nc, self.forwarder.router, lease=relay_lease)
        self._sessions = MediaSessions(
            nc,
            self.forwarder,
            self._relays_out,
            forwarder_id=forwarder_id,
            relay_refresh=relay_refresh,
            relay_give_up=relay_give_up,
            request_timeout=request_timeout,
        )
        self._requests: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._voice: asyncio.Task[None] | None = None
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
        return self._sessions.published_tracks

    @property
    def relays_out(self) -> list[tuple[str, str]]:
        """(track sid, downstream forwarder) of every relay this forwarder sends."""
        return self._relays_out.keys

    @property
    def relays_in(self) -> dict[str, RelayIn]:
        """Relays this forwarder receives, by track sid."""
        return self._sessions.relays_in

    @property
    def sessions(self) -> list[SessionKey]:
        return self._sessions.keys

    @property
    def ingress(self) -> IngressWatch:
        """The WHIP connections here and how long one may take to connect."""
        return self._sessions.ingress

    def subscriber_leg(self, room_id: str, sid: str, track_sid: str) -> SubscriberLeg:
        """The core leg carrying `track_sid` to a session (its stream, its state)."""
        return self._sessions.subscriber_leg(room_id, sid, track_sid)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to the sessions and rpc subjects, then send the first heartbeat."""
        if self.state is not ServiceState.NEW:
            raise InvalidStateError("start", self.state.value)
        self.state = ServiceState.RUNNING
        self._sessions.running = True
        self._subs.append(
            await self.nc.subscribe(forwarder_sessions(self.forwarder_id), cb=self._on_session)
        )
        self._subs.append(
            await self.nc.subscribe(forwarder_rpc(self.forwarder_id), cb=self._on_rpc)
        )
        await self.nc.flush(timeout=max(1, round(self._request_timeout)))
        await self._send_heartbeat()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="forwarder heartbeat")
        self._voice = asyncio.create_task(self._voice_loop(), name="forwarder speaker reports")
        log.info("forwarder %s started", self.forwarder_id)

    async def stop(self) -> None:
        """Close every connection, relay and task (bounded in time); announce `stopping`."""
        if self.state in (ServiceState.STOPPING, ServiceState.STOPPED):
            return
        self.state = ServiceState.STOPPING
        self._sessions.running = False
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        tasks = [t for t in (self._heartbeat, self._voice, *self._requests) if t is not None]
        tasks += self._sessions.tasks
        await _cancel(tasks)
        # a polite RelayStop each; the origins' leases cover whatever does not arrive
        await self._sessions.close_relays()
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
        if self.state is not ServiceState.RUNNING or not self._sessions.apply(desired):
            self.sessions_ignored += 1
            return False
        return True

    # ------------------------------------------------------------------ rpc

    async def _on_rpc(self, msg: Msg) -> None:
        try:
            request = decode(msg.data)
        except SchemaError as exc:
            await self._reply(msg, Error(code=exc.code.value, message=str(exc)))
            return
        if isinstance(request, SIGNALING_REQUESTS):
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
            reply = await self._sessions.answer(request)
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

    def _answer_relay(self, request: Message) -> Message | None:
        """Relay control, answered inline: it touches only the router."""
        if isinstance(request, RelayKeyframeRequest):
            if self._sessions.publishes(request.track_sid):
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
        if not self._sessions.publishes(track_sid):
            raise TrackNotFound(track_sid)
        now = asyncio.get_running_loop().time()
        self._relays_out.renew(track_sid, request.to_forwarder, now)
        return RelayAccepted(codec=codec_to_wire(self.forwarder.router.codec(track_sid)))

    # ------------------------------------------------------------------ active speakers

    @property
    def voices(self) -> RoomVoices:
        """The audio tracks published here by room, and their speaker reports."""
        return self._sessions.voices

    async def _voice_loop(self) -> None:
        interval = VOICE_REPORT_INTERVAL_MS / 1000
        while True:
            await asyncio.sleep(interval)
            for report in self._sessions.voices.tick(int(time.monotonic() * 1000)):
                try:
                    await self.nc.publish(room_voice(report.room_id), encode(report))
                except Exception as exc:  # the next change or refresh goes out again
                    log.warning("speaker report for %s not sent: %r", report.room_id, exc)

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
            at=now_ms(),
            peer_connections=self.peer_connections,
            published_tracks=len(self.published_tracks),
            legs=self.forwarder.router.leg_count,
            packets_per_s=round(rate),
            interval_ms=round(self.heartbeat_interval * 1000),
            stopping=stopping,
        )
        try:
            await self.nc.publish(FORWARDER_HEARTBEAT, encode(heartbeat))
        except Exception as exc:
            log.warning("heartbeat not sent: %r", exc)


def _error(exc: Exception) -> Error:
    """The `Error` reply for a failed request: the named error's code, or INTERNAL."""
    if isinstance(exc, ForwarderError | SchemaError):
        return Error(code=exc.code.value, message=str(exc))
    if isinstance(exc, ValueError):  # an id that cannot form a subject
        return Error(code=ErrorCode.BAD_REQUEST.value, message=str(exc))
    log.error("request failed", exc_info=exc)
    return Error(code=ErrorCode.INTERNAL.value, message=type(exc).__name__)


async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        _done, still = await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)
        for task in still:
            log.error("task %s did not stop in time", task.get_name())
