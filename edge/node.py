"""One running edge: its NATS bus, room fan-out, local sessions and heartbeat.

`EdgeNode.start` connects (once, for the whole process), waits in the background for the
room log's stream when the statekeeper has not made it yet (`/healthz` says so), subscribes
once to ``stagecast.sess.<edge_id>.>`` (direct replies, routed by sid to the socket) and
starts heart-beating. `drain` is the clean way out: every socket is told
`SERVER_SHUTDOWN` (4017, may resume elsewhere) and `EdgeGone` starts their grace at once;
`stop` then releases NATS. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.subscription import Subscription

from edge.admission import JoinGate
from edge.bus import Bus, BusUnavailable, log_missing
from edge.config import EdgeConfig
from edge.deadlines import Deadlines
from edge.fanout import Fanout
from edge.metrics import EdgeMetrics
from edge.ports import Resident
from edge.ratelimit import DataLimits
from edge.tokencache import VerifiedTokens
from schemas.api import EdgeGone, EdgeHeartbeat, HealthReply, HealthRequest
from schemas.clock import now_ms
from schemas.codec import encode
from schemas.log import LogEvent, SessionsAlive
from schemas.subjects import (
    EDGE_HEARTBEAT,
    LOG_STREAM,
    edge_sessions,
    parse_session_subject,
)

log = logging.getLogger("stagecast.edge")

ALIVE_BATCH = 1000
"""Sids per `SessionsAlive` event (the schema allows 1,024)."""
MAX_PENDING_DEPARTURES = 100_000


class EdgeNode:
    """The stateful shell of one edge process (see the module docstring)."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.edge_id = config.edge_id
        self.metrics = EdgeMetrics()
        self.tokens = VerifiedTokens(config.secret_for)
        """Participant tokens this edge verified (a shared audience token is checked once)."""
        self.sessions: dict[str, Resident] = {}
        """Sessions by sid, for direct replies (joined, joining or resuming)."""
        self.sockets: set[Resident] = set()
        """Every open socket, joined or not."""
        self.unjoined: set[Resident] = set()
        """Open sockets that have not joined yet (`edge.admission.UpgradeGate` bounds them)."""
        self.join_gate = JoinGate(
            config.max_joins_in_flight, config.max_join_wait, config.busy_retry_after
        )
        """The joins in flight on this edge, bounded (`SERVER_BUSY` beyond)."""
        self.draining = False
        self.pending_departures: list[tuple[LogEvent, str]] = []
        """Departures (`SessionDisconnected`, withdrawn joins) that could not be appended
        while NATS was away; appended when the link is back (bounded)."""
        self._bus: Bus | None = None
        self._fanout: Fanout | None = None
        self._direct: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._log_wait: asyncio.Task[None] | None = None
        self._stopped = False
        self._deadlines: Deadlines | None = None
        self.metrics.sockets = lambda: len(self.sockets)
        self.metrics.sockets_unjoined = lambda: len(self.unjoined)
        self.metrics.joins_in_flight = lambda: self.join_gate.in_flight
        self.metrics.rooms = lambda: len(self._fanout.rooms) if self._fanout else 0

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the edge is not started")
        return self._bus

    @property
    def fanout(self) -> Fanout:
        if self._fanout is None:
            raise RuntimeError("the edge is not started")
        return self._fanout

    @property
    def deadlines(self) -> Deadlines:
        """The sockets' join deadlines (made on the running loop at first use)."""
        if self._deadlines is None:
            self._deadlines = Deadlines(asyncio.get_running_loop())
        return self._deadlines

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to NATS, subscribe to direct replies, start beating and, if the room log
        does not exist yet, wait for it in the background."""
        config = self.config
        if len(config.api_secret.encode()) < 32:
            log.warning("edge %s: api secret under 32 bytes (dev only)", self.edge_id)
        if self._bus is None:
            await self.connect()
        assert self._bus is not None
        self._fanout = Fanout(
            self._bus, self.metrics, DataLimits.of(config), config.counts_cpu_share
        )
        bus = self._bus
        self.metrics.appends_refused = lambda: bus.refused_appends
        self.metrics.api_replies_recovered = lambda: bus.replies_recovered
        appends = bus.room_log.outages[LOG_STREAM]
        self.metrics.append_retries = lambda: (appends.retries, appends.outages)
        budget = bus.room_log.budget
        self.metrics.append_retries_denied = lambda: budget.denied
        link = bus.link
        if link is not None:
            link.on_back = self._link_back
            self.metrics.nats_link = lambda: (
                int(link.connected),
                link.disconnects,
                link.failed_attempts,
            )
        try:
            self._direct = await self._bus.subscribe_raw(
                edge_sessions(self.edge_id), self._on_direct
            )
        except BaseException:
            await self._bus.close()
            raise
        await self._beat()
        self._heartbeat = asyncio.create_task(self._heartbeats())
        if not bus.log_ready:
            self._log_wait = asyncio.create_task(bus.wait_for_log())
        log.info("edge %s started", self.edge_id)

    async def connect(self) -> None:
        """Open the NATS connection now (`start` does it when this was not called first).

        `edge.main` calls it before the HTTP server starts, so a refused connection
        (`NatsAuthRefused`) reaches the caller as itself rather than as a failed lifespan.
        """
        if self._bus is not None:
            return
        config = self.config
        self._bus = await Bus.connect(
            config.nats_url,
            name=f"stagecast-edge-{self.edge_id}",
            append_timeout=config.append_timeout,
            append_attempt_timeout=config.append_attempt_timeout,
            request_timeout=config.request_timeout,
            connect_timeout=config.connect_timeout,
            auth=config.nats_auth,
        )

    async def drain(self) -> None:
        """Close every socket with SERVER_SHUTDOWN and announce `EdgeGone`. Idempotent."""
        if self.draining:
            return
        self.draining = True
        if self._log_wait is not None:
            self._log_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_wait
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        sockets = list(self.sockets)
        for session in sockets:
            session.shutdown()
        ingress = [s for s in self.sessions.values() if s not in self.sockets]
        for session in ingress:  # socketless (WHIP) sessions leave the room now
            session.shutdown()
        if ingress:
            await asyncio.wait(
                [asyncio.create_task(s.detached.wait()) for s in ingress],
                timeout=self.config.close_grace + 1.0,
            )
        if sockets:
            await asyncio.wait(
                [asyncio.create_task(s.closed.wait()) for s in sockets],
                timeout=self.config.close_grace + 1.0,
            )
        if self._bus is not None:
            try:
                await self._bus.publish(
                    EDGE_HEARTBEAT, encode(EdgeGone(edge_id=self.edge_id, at=now_ms()))
                )
                await self._bus.flush()
            except BusUnavailable as exc:
                log.warning("edge %s: EdgeGone not sent: %s", self.edge_id, exc)

    async def stop(self) -> None:
        """Drain, then drop every subscription and the connection. Idempotent."""
        if self._stopped:
            return
        await self.drain()
        self._stopped = True
        if self._deadlines is not None:
            self._deadlines.close()
        if self._fanout is not None:
            await self._fanout.close()
        if self._direct is not None:
            with contextlib.suppress(Exception):
                await self._direct.unsubscribe()
        if self._bus is not None:
            await self._bus.close()
        log.info("edge %s stopped", self.edge_id)

    # ------------------------------------------------------------------ sessions

    def opened(self, session: Resident) -> None:
        """A socket was accepted: it is told when the edge drains."""
        self.sockets.add(session)
        self.unjoined.add(session)
        self.metrics.sockets_opened += 1

    def socket_joined(self, session: Resident) -> None:
        """A socket's join (or resume) was accepted."""
        self.unjoined.discard(session)

    def closed_socket(self, session: Resident) -> None:
        """A socket is gone."""
        self.sockets.discard(session)
        self.unjoined.discard(session)

    def register(self, session: Resident) -> None:
        """Route direct replies for `session.sid` to this session."""
        self.sessions[session.sid] = session

    def unregister(self, session: Resident) -> None:
        """Stop routing `session.sid` here, unless another socket took it over."""
        if session.sid and self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]

    def resident(self, sid: str) -> Resident | None:
        """The session direct replies for `sid` go to, if any."""
        return self.sessions.get(sid)

    def _on_direct(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A direct reply, raw from the NATS reader (`Bus.subscribe_raw`): routed to its
        session by sid at once. Never raises (it runs inside the reader)."""
        try:
            parsed = parse_session_subject(subject.decode())
        except UnicodeDecodeError:
            return
        if parsed is None:
            return
        sid, connection_id = parsed
        session = self.sessions.get(sid)
        if session is None:
            return  # the socket is gone (a late kick or ack): nothing to deliver
        if connection_id is not None and connection_id != session.connection_id:
            # The answer to a request of an earlier socket of this session (before a
            # resume): it must not be taken for one of this socket's requests.
            self.metrics.stale_replies += 1
            return
        try:
            session.on_direct(data)
        except Exception:
            log.exception("direct reply to %s failed", sid)

    def departure_failed(self, event: LogEvent, msg_id: str) -> None:
        """A socket ended while NATS was away: tell the log when the link is back."""
        if len(self.pending_departures) < MAX_PENDING_DEPARTURES:
            self.pending_departures.append((event, msg_id))
        else:
            log.warning("edge %s: too many departures pending; dropping one", self.edge_id)

    async def _link_back(self) -> None:
        """NATS is back after an outage. The statekeeper may have taken this edge for gone
        (an edge cut off alone, while the statekeeper stayed connected): first the
        departures that could not be told, then, room by room, the sessions whose sockets
        this edge still holds (`SessionsAlive`). The fold takes them back from their grace,
        and tells those it already removed that their session is lost."""
        departures, self.pending_departures = self.pending_departures, []
        for event, msg_id in departures:
            try:
                await self.bus.append(event, msg_id)
            except BusUnavailable as exc:
                log.warning("edge %s: departure not appended: %s", self.edge_id, exc)
        by_room: dict[str, list[str]] = {}
        for session in list(self.sessions.values()):
            if session.joined:
                by_room.setdefault(session.room_id, []).append(session.sid)
        at = now_ms()
        for room_id, sids in sorted(by_room.items()):
            for k in range(0, len(sids), ALIVE_BATCH):
                event = SessionsAlive(
                    room_id=room_id,
                    at=at,
                    edge_id=self.edge_id,
                    sids=tuple(sids[k : k + ALIVE_BATCH]),
                )
                try:
                    await self.bus.append(event, f"alive:{self.edge_id}:{at}:{room_id}:{k}")
                except BusUnavailable as exc:
                    log.warning(
                        "edge %s: sessions of %r not re-asserted: %s", self.edge_id, room_id, exc
                    )
        log.info(
            "edge %s: NATS back; re-asserted %d sessions",
            self.edge_id,
            sum(map(len, by_room.values())),
        )

    # ------------------------------------------------------------------ heartbeat, health

    async def _beat(self) -> None:
        beat = EdgeHeartbeat(
            edge_id=self.edge_id,
            at=now_ms(),
            sockets=len(self.sockets),
            interval_ms=int(self.config.heartbeat_interval * 1000),
        )
        await self.bus.publish(EDGE_HEARTBEAT, encode(beat))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            if not self.bus.connected:
                continue  # the link logged that it is down; nothing to say every second
            try:
                await self._beat()
            except BusUnavailable as exc:
                log.warning("edge %s: heartbeat not sent: %s", self.edge_id, exc)

    async def health(self) -> tuple[bool, str]:
        """(healthy, reason): NATS connected, the room log exists, the statekeeper answers ok
        within 1 s and, with `require_forwarder`, knows a live media forwarder (so a publish
        would succeed)."""
        if self._bus is None or self.draining:
            return False, "the edge is not running"
        if not self._bus.connected:
            return False, "NATS is not connected"
        if not await self._bus.log_exists():
            return False, log_missing()
        jetstream = await self._bus.jetstream_ok(self.config.health_timeout)
        if jetstream is not None:
            return False, jetstream
        try:
            reply, _ = await self._bus.request(HealthRequest(), timeout=self.config.health_timeout)
        except BusUnavailable as exc:
            return False, f"the statekeeper does not answer: {exc}"
        if not isinstance(reply, HealthReply):
            return False, f"the statekeeper answered {reply.TYPE}"
        if not reply.ok:
            return False, "the statekeeper is not caught up with the room log"
        if self.config.require_forwarder and reply.forwarders < 1:
            return False, "no media forwarder is known to the statekeeper yet"
        return True, "ok"


__all__ = ["EdgeNode"]
