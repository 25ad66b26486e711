"""What one edge needs to run: where NATS is, the API key pairs, its address and its limits."""

from __future__ import annotations

import dataclasses
import resource
import secrets
from collections.abc import Mapping

from roomlog.connect import NatsAuth
from schemas.log import ACTION_DEADLINE_MS
from schemas.subjects import edge_sessions

MIN_DATA_BURST_BYTES = 16 * 1024
"""The smallest data burst: a data frame with the largest payload (15 KiB) must fit."""


def new_edge_id() -> str:
    """A fresh edge id, ``ED_`` + 12 random url-safe characters."""
    return "ED_" + secrets.token_urlsafe(9)


def _soft_nofile() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def _spare(soft_limit: int) -> int:
    """Descriptors kept for NATS, logs and files: a twentieth, at least 64."""
    return max(64, soft_limit // 20)


def default_max_connections(soft_limit: int | None = None) -> int:
    """The connection cap for a process whose RLIMIT_NOFILE soft limit is `soft_limit`.

    Leaves `_spare` descriptors, room for a full accept burst (`accept_backlog`) and for
    the connections held briefly beyond the cap to be told why (`overflow_lane`).
    """
    soft = _soft_nofile() if soft_limit is None else soft_limit
    burst = min(2048, max(16, soft // 8))
    return max(1, (soft - _spare(soft) - burst) * 15 // 16 - 16)


def overflow_lane(max_connections: int) -> int:
    """Connections beyond the cap held until they are told `TOO_MANY_CONNECTIONS`."""
    return max(16, max_connections // 16)


def accept_backlog(max_connections: int, soft_limit: int | None = None) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go.

    Each of a burst holds a descriptor before the first of them is refused, so the burst
    must fit in what the cap, its overflow lane and the spare leave: 16 to 2,048.
    """
    soft = _soft_nofile() if soft_limit is None else soft_limit
    left = soft - max_connections - overflow_lane(max_connections) - _spare(soft)
    return max(16, min(2048, left))


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Settings of one edge process (frozen; build a new one to change anything).

    `api_key` / `api_secret` is the pair the edge signs resume tokens with; `api_secrets`
    holds further key -> secret pairs it accepts tokens from (the main pair is always
    accepted). `edge_id` is generated when left empty; it must match ``[A-Za-z0-9_-]+``.
    `port` 0 lets the OS pick a free port (`running_edge` reports the real one).
    """

    nats_url: str
    api_key: str
    api_secret: str
    api_secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 7880
    edge_id: str = ""
    dev_mode: bool = False
    nats_auth: NatsAuth | None = None
    """NKey/creds and TLS files for NATS (a password goes in `nats_url`)."""

    rate_per_s: float = 50.0
    """Frames a socket may send per second, sustained."""
    rate_burst: int = 100
    """Frames a socket may send at once after a quiet period."""
    flood_close_after: int = 200
    """Consecutive rate-limited frames after which the socket is closed (4008)."""
    send_queue_size: int = 1024
    """Frames queued for one socket before it is closed as a slow consumer (4010)."""
    data_bytes_per_s: int = 64 * 1024
    """Data-frame bytes one session may send per second, sustained (beyond: `RATE_LIMITED`)."""
    data_burst_bytes: int = 256 * 1024
    """Data-frame bytes one session may send at once after a quiet period."""
    room_data_bytes_per_s: int = 256 * 1024
    """Data-frame bytes a room's data channel carries per second, sustained; each edge
    drops (undelivered, counted) the frames of a room beyond it."""
    room_data_burst_bytes: int = 1024 * 1024
    """Data-frame bytes a room's data channel carries at once after a quiet period."""

    join_timeout: float = 5.0
    """Seconds to wait for the statekeeper to accept a join (then `UNAVAILABLE`)."""
    request_timeout: float = 2.0
    """Seconds to wait for a read on `stagecast.sk.api` or an API write's outcome."""
    append_timeout: float = 3.0
    """Seconds to wait for JetStream to confirm a room-log append (at least the room log's
    action deadline, `schemas.log.ACTION_DEADLINE_MS`). A failed attempt (a leader
    election, a reconnect) is repeated with the same message id within this time, each
    attempt waiting at most `append_attempt_timeout`."""
    append_attempt_timeout: float = 1.0
    """Seconds one append attempt waits for its ack before it is sent again."""
    connect_timeout: float = 10.0
    """Seconds to reach NATS at start (reconnects afterwards never give up)."""
    heartbeat_interval: float = 1.0
    health_timeout: float = 1.0
    require_forwarder: bool = False
    """`/healthz` answers 503 until the statekeeper knows a live media forwarder (a join, a
    publish and a subscribe would all succeed); `stagecast up` sets it."""
    close_grace: float = 5.0
    """Seconds a closing socket gets to flush its last frames and the close."""
    liveness_interval: float = 10.0
    """Seconds a WebSocket may stay silent before the edge pings it."""
    liveness_timeout: float = 20.0
    """Seconds of silence (no pong, no frame) after which a WebSocket is dropped."""
    liveness_recheck: float = 120.0
    """Seconds a WebSocket the edge keeps writing frames to may stay silent before it is
    pinged anyway: meanwhile TCP watches it (``TCP_USER_TIMEOUT`` = `liveness_timeout`);
    0: writes do not count, every socket silent `liveness_interval` is pinged."""
    ws_max_size: int = 4 * 1024 * 1024
    """Largest WebSocket message a signaling socket reads (a larger one: close 1009);
    frames over 1 MiB get PAYLOAD_TOO_LARGE."""

    max_joins_in_flight: int = 2048
    """Joins and resumes this edge has appended and not yet seen answered; one more is
    answered `SERVER_BUSY` at once (`edge.admission.JoinGate`), the socket kept open."""
    max_join_wait: float = 2.0
    """A join answered later than this (seconds) narrows the edge's window of joins in
    flight, one answered in time widens it (`edge.admission.JoinGate`, AIMD): the log or the
    statekeeper is behind, and a join admitted now would only wait longer, towards
    `join_timeout`."""
    busy_retry_after: float = 0.5
    """Seconds a `SERVER_BUSY` join is told to wait before trying again (clients add jitter)."""
    max_unjoined_sockets: int = 1024
    """Signaling sockets open and not yet joined (upgraded, their join not in or not yet
    answered) beyond which a new ``/rtc`` upgrade is answered HTTP 503 with ``Retry-After``
    instead of the 101 (`edge.admission.UpgradeGate`): the edge is behind already."""
    max_upgrade_lag: float = 1.0
    """Seconds the edge's event loop may have run late in the last second before a new
    ``/rtc`` upgrade is answered HTTP 503 with ``Retry-After`` (`edge.admission.UpgradeGate`)."""
    upgrade_retry_after: float = 1.0
    """Seconds a refused upgrade is told to wait (``Retry-After``; longer while the loop is
    further behind, up to 3 s; clients add jitter)."""
    counts_cpu_share: float = 0.25
    """The share of one core this edge's counts (and active speaker) delivery may take while
    joins go on (`edge.counts`): sized for one edge per core; with several edges on one
    host's cores, give each its part of the host's budget (`stagecast up` does)."""
    join_deadline: float = 10.0
    """Seconds a socket has to send its join (or resume); then `JOIN_TIMEOUT`, close 4018."""
    http_read_timeout: float = 10.0
    """Seconds a connection has to send a whole HTTP request (the upgrade too); then closed."""
    max_connections: int = 0
    """Open connections (HTTP and WebSocket) this edge serves; 0: computed from
    RLIMIT_NOFILE with headroom (`default_max_connections`). Over it: `TOO_MANY_CONNECTIONS`."""
    max_connections_per_address: int = 0
    """Open connections from one client IP address; 0: the same as `max_connections`."""

    def __post_init__(self) -> None:
        if not self.edge_id:
            object.__setattr__(self, "edge_id", new_edge_id())
        edge_sessions(self.edge_id)  # ValueError for an id unusable in subjects
        if not self.api_key or not self.api_secret:
            raise ValueError("api_key and api_secret must not be empty")
        if self.rate_per_s <= 0 or self.rate_burst < 1 or self.flood_close_after < 1:
            raise ValueError("rate limits must be positive")
        if self.append_timeout * 1000 < ACTION_DEADLINE_MS:
            raise ValueError(
                f"append_timeout must be at least {ACTION_DEADLINE_MS / 1000} s (the room log's "
                "action deadline): an append reported failed earlier could still be applied"
            )
        if not 0 < self.append_attempt_timeout <= self.append_timeout:
            raise ValueError("append_attempt_timeout must be positive, at most append_timeout")
        if self.send_queue_size < 2:
            raise ValueError("send_queue_size must be at least 2")
        if self.data_bytes_per_s <= 0 or self.room_data_bytes_per_s <= 0:
            raise ValueError("data byte rates must be positive")
        if min(self.data_burst_bytes, self.room_data_burst_bytes) < MIN_DATA_BURST_BYTES:
            raise ValueError(
                f"data bursts must be at least {MIN_DATA_BURST_BYTES} bytes (one largest frame)"
            )
        if self.max_joins_in_flight < 1 or min(self.busy_retry_after, self.max_join_wait) <= 0:
            raise ValueError(
                "max_joins_in_flight must be >= 1, busy_retry_after and max_join_wait > 0"
            )
        upgrade_waits = min(self.max_upgrade_lag, self.upgrade_retry_after)
        if self.max_unjoined_sockets < 1 or upgrade_waits <= 0:
            raise ValueError(
                "max_unjoined_sockets must be >= 1, max_upgrade_lag and upgrade_retry_after > 0"
            )
        if not 0 < self.counts_cpu_share <= 1:
            raise ValueError("counts_cpu_share must be in (0, 1]")
        if self.liveness_recheck and self.liveness_recheck < self.liveness_interval:
            raise ValueError("liveness_recheck must be 0 or at least liveness_interval")
        if self.join_deadline <= 0 or self.http_read_timeout <= 0:
            raise ValueError("join_deadline and http_read_timeout must be positive")
        if self.max_connections < 0 or self.max_connections_per_address < 0:
            raise ValueError("connection limits must not be negative (0: computed)")
        if not self.max_connections:
            object.__setattr__(self, "max_connections", default_max_connections())
        if not self.max_connections_per_address:
            object.__setattr__(self, "max_connections_per_address", self.max_connections)
        if self.max_connections_per_address > self.max_connections:
            raise ValueError("max_connections_per_address must not exceed max_connections")

    def secret_for(self, api_key: str) -> str | None:
        """The secret of an api key this edge accepts tokens from, or None."""
        if api_key == self.api_key:
            return self.api_secret
        return self.api_secrets.get(api_key)


__all__ = [
    "MIN_DATA_BURST_BYTES",
    "EdgeConfig",
    "accept_backlog",
    "default_max_connections",
    "new_edge_id",
    "overflow_lane",
]
