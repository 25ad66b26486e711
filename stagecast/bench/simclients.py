"""Simulated signaling clients for `stagecast bench storm`: many raw WebSockets per process.

One client is one TCP connection speaking WebSocket through `stagecast.bench.wsclient`
(a hand-written handshake and frame parser on a non-blocking socket in the process's one
epoll): it has no task, transport, queue, timer or SDK. It sends one `join` frame (encoded
once per token, masked per send), then only reads: a `counts` frame whose bytes (WebSocket
header included) this process has already unpacked is counted by one dictionary look-up
(every socket of an edge gets the same bytes); any other frame's type tag is peeked from
its first bytes (`peek_tag`), participant frames are counted, `joined` frames are unpacked
(the speakers snapshot and the room's total), and a new `counts` frame is unpacked once.
A join answered `SERVER_BUSY` is sent again on the same socket after the error's
retry-after hint (or the SDKs' backoff for that attempt, 0.25 s doubling up to 2 s, when
longer) times a random factor in [1, 2) (jitter, so the refused do not come back
together); the client counts as `told_to_wait` and its join time runs from its first join
frame.

An upgrade answered 503 ``SERVER_BUSY`` (the edge is behind, before any socket exists)
is tried again on a new socket after its ``stagecast-retry-after-ms`` hint, grown and
jittered the same way; the client counts in `refused_upgrades`. Either wait is bounded by
the storm's join timeout, after which the client is a `join timeout` failure.

A `Fleet` is the clients of one process (`stagecast.bench.clientprocs` runs several): it
drives its share of every wave, client `g` starting at ``start_at + g / rate`` on
`time.monotonic`, which all processes on Linux share; one timer starts every client due
(at most `CONNECT_TICK_S` late). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time
import urllib.parse

import msgpack

from schemas.client import Join, Leave
from schemas.codec import encode
from stagecast.bench.wsclient import Poller, RawWebSocket, new_key, server_frame

Bytes = bytes | bytearray | memoryview
SUPERSEDED = "superseded"
"""A client refused `SERVER_BUSY` whose socket the edge closed (or whose upgrade it refused):
a new one joins in its place."""
RETRY_AFTER_MS = b"stagecast-retry-after-ms:"
"""The refused upgrade's hint header, lower-cased (`edge.serving`)."""
PARTICIPANT_TAGS = frozenset((b"participant_joined", b"participant_left", b"participant_updated"))
CONNECT_TICK_S = 0.002
"""The connect pacer's shortest sleep: the clients due meanwhile start together."""
_KNOWN_COUNTS = 64
"""Distinct counts frames a process remembers (then it forgets them all and starts over)."""


def peek_tag(data: Bytes) -> bytes:
    """The type tag of an encoded frame, read from its first bytes when ``"t"`` leads the map
    (as `schemas.codec.to_wire` writes it); anything else is unpacked."""
    head = data[0] if data else 0
    pos = 1 if 0x80 <= head <= 0x8F else 3 if head == 0xDE else 5 if head == 0xDF else -1
    if pos > 0 and data[pos : pos + 2] == b"\xa1t":
        size = data[pos + 2]
        if 0xA0 <= size <= 0xBF:
            return bytes(data[pos + 3 : pos + 3 + size - 0xA0])
        if size == 0xD9:
            return bytes(data[pos + 4 : pos + 4 + data[pos + 3]])
    try:
        tag = msgpack.unpackb(data, raw=False).get("t")
    except Exception:
        return b""
    return tag.encode() if isinstance(tag, str) else b""


def _total(counts: object) -> int:
    value = counts.get("total", 0) if isinstance(counts, dict) else 0
    return value if type(value) is int else 0


@dataclasses.dataclass(frozen=True, slots=True)
class Wave:
    """Clients ``0..count-1`` of one kind; process `p` of `P` drives those with g % P == p."""

    name: str
    tokens: tuple[str, ...]  # one per client, or one shared by all
    count: int
    rate: float
    start_at: float
    audience: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Churn:
    """Joins then leaves at `rate` per second (per process) for `seconds`, from `start_at`."""

    token: str
    seconds: float
    rate: float
    start_at: float


@dataclasses.dataclass(slots=True)
class ProcResults:
    """What one process measured in one storm (times: `time.monotonic` seconds)."""

    joined: int = 0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    drops: dict[str, int] = dataclasses.field(default_factory=dict)  # closed after joining
    join_ms: list[float] = dataclasses.field(default_factory=list)
    connect_join_ms: list[float] = dataclasses.field(default_factory=list)
    started: list[float] = dataclasses.field(default_factory=list)  # audience connect starts
    last_joined: float = 0.0
    audience_participants: list[int] = dataclasses.field(default_factory=list)
    audience_participant_frames: int = 0
    audience_count_frames: int = 0
    audience_seconds: float = 0.0  # summed: each viewer's join -> the end of measurement
    participants_total: int = 0
    lags_ms: list[float] = dataclasses.field(default_factory=list)
    never_exact: int = 0
    told_to_wait: int = 0  # clients answered SERVER_BUSY at least once
    busy_answers: int = 0  # SERVER_BUSY answers in all
    refused_upgrades: int = 0  # clients whose upgrade was answered 503 at least once
    upgrade_refusals: int = 0  # such 503 answers in all


class SimClient(RawWebSocket):
    """One simulated participant on one socket (see the module docstring)."""

    __slots__ = ("audience", "busy", "busy_hint", "churn", "connect_at", "count_frames",
                 "failure", "fleet", "join_frame", "joined_at", "leaving", "lost",
                 "participant_frames", "participants", "refused", "sent_at", "source",
                 "successor", "total", "total_at")  # fmt: skip

    def __init__(
        self, fleet: Fleet, edge: Edge, join_frame: bytes, audience: bool, churn: bool = False
    ) -> None:
        super().__init__(edge.host, edge.port, edge.path, new_key())
        self.fleet = fleet
        self.join_frame = join_frame
        self.audience = audience
        self.churn = churn  # joins and leaves during the counts phase; not in the results
        self.leaving = False
        self.connect_at = time.monotonic()
        self.sent_at = self.joined_at = self.total_at = 0.0
        self.participants = self.participant_frames = self.count_frames = 0
        self.total = -1
        self.failure = ""
        self.lost = False
        self.busy = 0  # SERVER_BUSY answers to this client's join
        self.busy_hint = 0.0  # seconds to wait after the last one (0: none pending)
        self.refused = 0  # upgrades answered 503 SERVER_BUSY
        self.successor: SimClient | None = None  # the client that joins in its place
        self.source = "127.0.0.1"  # the local address it connects from

    @property
    def latest(self) -> SimClient:
        """This client, or the last of those that took its place (`Fleet.reconnect`)."""
        client = self
        while client.successor is not None:
            client = client.successor
        return client

    def fail(self, reason: str) -> None:
        """The join failed (a no-op once joined or failed): count it, drop the socket."""
        if self.joined_at or self.failure:
            return
        self.failure = reason
        if not self.churn:
            self.fleet.failed += 1
        self.abort()

    def on_open(self) -> None:
        self.send_binary(self.join_frame)
        self.sent_at = self.sent_at or time.monotonic()  # a reconnect keeps the first

    def on_failed(self, reason: str) -> None:
        self.fail(reason)

    def on_refused(self, head: bytes) -> bool:
        """A 503 to the upgrade: wait its hint (grown, jittered) and connect again."""
        if not head.startswith(b"http/1.1 503") or self.failure or self.fleet.closing:
            return False
        hint_ms = 1000
        at = head.find(RETRY_AFTER_MS)
        if at >= 0:
            value = head[at + len(RETRY_AFTER_MS) :].split(b"\r\n", 1)[0].strip()
            hint_ms = int(value) if value.isdigit() else hint_ms
        self.refused += 1
        self.busy_hint = self._grown(hint_ms / 1000, self.busy + self.refused)
        return True  # aborted: `on_closed` reconnects after the hint

    def on_closed(self, exc: Exception | None) -> None:
        self.lost = True
        if self.joined_at and not self.fleet.closing and not self.leaving:
            code = self.close_code
            reason = f"close {code} {self.close_reason}" if code else f"tcp {exc!r}"
            self.fleet.drops[reason[:60]] += 1
        elif not self.joined_at and self.busy_hint and not self.fleet.closing:
            self.failure = SUPERSEDED  # refused SERVER_BUSY and closed: connect again
            delay = self.busy_hint * (1 + random.random())
            asyncio.get_running_loop().call_later(delay, self.fleet.reconnect, self)
        elif not self.joined_at:
            how = type(exc).__name__ if exc is not None else "eof" if self.opened else "no 101"
            self.fail(f"closed before joined ({self.close_code}, {how})")

    def data_received(self, data: bytes) -> None:
        # The hot path: one whole counts frame this process has unpacked already.
        if not self._buf and (total := self.fleet.known_counts.get(data)) is not None:
            self.count_frames += 1
            self.fleet.count_frames += 1
            if total != self.total:
                self._set_total(total)
            return
        RawWebSocket.data_received(self, data)

    def on_binary(self, data: bytes) -> None:
        tag = peek_tag(data)
        fleet = self.fleet
        if tag == b"counts":
            self.count_frames += 1
            fleet.count_frames += 1
            if data != fleet.counts_frame:  # every socket gets the same bytes: unpack once
                fleet.counts_frame = data
                fleet.counts_total = _total(msgpack.unpackb(data, raw=False).get("counts"))
                fleet.counts_unpacked += 1
                known = fleet.known_counts
                if len(known) >= _KNOWN_COUNTS:
                    known.clear()
                known[server_frame(data)] = fleet.counts_total
            self._set_total(fleet.counts_total)
        elif tag in PARTICIPANT_TAGS:
            self.participants += 1
            self.participant_frames += 1
        elif tag == b"joined":
            body = msgpack.unpackb(data, raw=False)
            self.joined_at = time.monotonic()
            self.participants += len(body.get("speakers", ()))
            if not self.churn:
                fleet.joined += 1
            self._set_total(_total(body.get("counts")))
        elif tag in (b"error", b"disconnect") and not self.joined_at:
            body = msgpack.unpackb(data, raw=False)
            if body.get("code") == "SERVER_BUSY" and not self.failure:
                self._wait_and_retry(body.get("retry_after_ms") or 1000)
                return
            self.fail(f"{tag.decode()} {body.get('code') or body.get('reason')}")

    def _wait_and_retry(self, retry_after_ms: object) -> None:
        """Send the join again on this socket after the hint, with jitter ([1, 2) x)."""
        self.busy += 1
        hint = retry_after_ms / 1000 if isinstance(retry_after_ms, int) else 1.0
        hint = self._grown(hint, self.busy + self.refused)
        self.busy_hint = hint
        loop = asyncio.get_running_loop()
        loop.call_later(hint * (1 + random.random()), self._resend)

    @staticmethod
    def _grown(hint: float, answers: int) -> float:
        """The wait after the `answers`-th busy answer: the hint, or the SDKs' backoff for
        that attempt (0.25 s doubling up to 2 s) when longer."""
        return max(hint, min(2.0, 0.25 * 2.0 ** (answers - 1)))

    def _resend(self) -> None:
        if not (self.joined_at or self.failure or self.lost):
            self.busy_hint = 0.0
            self.send_binary(self.join_frame)

    def _set_total(self, total: int) -> None:
        if total != self.total:
            if not self.churn:
                target = self.fleet.target
                self.fleet.exact += (total == target) - (self.total == target)
            self.total, self.total_at = total, time.monotonic()


@dataclasses.dataclass(frozen=True, slots=True)
class Edge:
    """Where an edge's signaling WebSocket is."""

    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> Edge:
        parts = urllib.parse.urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/")


class Fleet:
    """The clients of one process in one storm."""

    def __init__(self, index: int, procs: int, edges: list[str], hosts: list[str]) -> None:
        self.index, self.procs, self.hosts = index, procs, hosts
        self.edges = [Edge.of(url) for url in edges]
        self.clients: list[SimClient] = []
        self.churners: list[SimClient] = []
        self.poller: Poller | None = None  # made at the first connect, in the running loop
        self.joined = self.failed = self.exact = 0
        self.count_frames = 0  # counts frames received by every client of this process
        self.counts_frame, self.counts_total = b"", -1
        self.known_counts: dict[bytes, int] = {}  # a counts frame's bytes -> its total
        self.counts_unpacked = 0  # counts frames this process unpacked (the others: looked up)
        self.target = -1
        self.drops: collections.Counter[str] = collections.Counter()
        self.closing = False
        self.held: ProcResults | None = None

    def hold(self, storm_end: float) -> None:
        """The room is held from now on: the count lags and count rates end here."""
        if self.held is None:
            self.held = self.results(storm_end, time.monotonic())

    def set_target(self, total: int) -> None:
        self.target = total
        self.exact = sum(1 for c in self.clients if c.joined_at and c.total == total)

    def _start(
        self, g: int, frame: bytes, audience: bool, timeout: float, churn: bool = False
    ) -> SimClient:
        edge = self.edges[g % len(self.edges)]
        host = self.hosts[(g // len(self.edges)) % len(self.hosts)]
        client = SimClient(self, edge, frame, audience, churn)
        client.source = host
        self._connect_soon(client, timeout)
        return client

    def _connect_soon(self, client: SimClient, timeout: float) -> None:
        if self.poller is None:
            self.poller = Poller()
        local = None if self.hosts == ["127.0.0.1"] else client.source
        client.connect(self.poller, local, timeout)

    def reconnect(self, old: SimClient) -> None:
        """`old` was refused `SERVER_BUSY` and closed: a new socket joins in its place,
        keeping its first connect and join times and its busy count."""
        if self.closing:
            return
        edge = Edge(old.host, old.port, old.path)
        client = SimClient(self, edge, old.join_frame, old.audience, old.churn)
        client.source, client.connect_at, client.sent_at = old.source, old.connect_at, old.sent_at
        client.busy, client.refused = old.busy, old.refused
        old.successor = client
        (self.churners if old.churn else self.clients).append(client)
        self._connect_soon(client, 30.0)

    async def run_wave(self, wave: Wave, join_timeout: float) -> dict[str, float]:
        """Start this process's share of `wave` at its pace; wait until each is settled."""
        loop = asyncio.get_running_loop()
        frames = {token: encode(Join(id=1, token=token)) for token in set(wave.tokens)}
        settled_before, mine = self.joined + self.failed, []
        g = self.index
        while g < wave.count:
            if (delay := wave.start_at + g / wave.rate - loop.time()) > 0:
                await asyncio.sleep(max(delay, CONNECT_TICK_S))
            now = loop.time()
            while g < wave.count and wave.start_at + g / wave.rate <= now:
                frame = frames[wave.tokens[g % len(wave.tokens)]]
                client = self._start(g, frame, wave.audience, join_timeout)
                mine.append(client)
                self.clients.append(client)
                g += self.procs
        deadline = loop.time() + join_timeout
        while loop.time() < deadline and self.joined + self.failed - settled_before < len(mine):
            await asyncio.sleep(0.02)
        mine = [c.latest for c in mine]  # a client superseded: the one in its place
        for client in mine:
            client.fail("join timeout")  # a no-op for those settled
        joined = [c.joined_at for c in mine if c.joined_at]
        return {"last_joined": max(joined, default=0.0), "joined": len(joined)}

    async def churn(self, churn: Churn) -> dict[str, int]:
        """Move the room's count steadily: join churners one by one, then make them leave.

        Operations go out at ``churn.rate`` (this process's share), the first half joins
        and the second half leaves (`Leave`), all within ``churn.seconds``."""
        loop = asyncio.get_running_loop()
        join, leave = encode(Join(id=1, token=churn.token)), encode(Leave(id=2))
        ops = max(2, int(churn.seconds * churn.rate))
        half, mine = ops // 2, []
        start_at = churn.start_at + self.index / (churn.rate * self.procs)
        for i in range(ops):
            if (delay := start_at + i / churn.rate - loop.time()) > 0:
                await asyncio.sleep(delay)
            if i < half:
                client = self._start(self.index + i, join, True, churn.seconds, churn=True)
                mine.append(client)
                self.churners.append(client)
            else:
                client = mine[i - half]
                client.leaving = True
                client.send_binary(leave)
        if (delay := churn.start_at + churn.seconds - loop.time()) > 0:
            await asyncio.sleep(delay)
        return {"ops": ops, "joined": sum(1 for c in mine if c.joined_at)}

    def results(self, storm_end: float, end_at: float) -> ProcResults:
        out = ProcResults(joined=self.joined, drops=dict(self.drops))
        failures: collections.Counter[str] = collections.Counter()
        for c in self.clients:
            if c.failure == SUPERSEDED:
                continue  # its replacement is counted
            if c.audience:
                out.started.append(c.connect_at)
            if c.busy:
                out.told_to_wait += 1
                out.busy_answers += c.busy
            if c.refused:
                out.refused_upgrades += 1
                out.upgrade_refusals += c.refused
            if not c.joined_at:
                failures[c.failure or "unsettled"] += 1
                continue
            out.participants_total += c.participants
            if c.audience:
                out.join_ms.append((c.joined_at - c.sent_at) * 1000)
                out.connect_join_ms.append((c.joined_at - c.connect_at) * 1000)
                out.last_joined = max(out.last_joined, c.joined_at)
                out.audience_participants.append(c.participants)
                out.audience_participant_frames += c.participant_frames
                out.audience_count_frames += c.count_frames
                out.audience_seconds += max(0.0, end_at - c.joined_at)
            if c.total == self.target:
                out.lags_ms.append(max(0.0, c.total_at - storm_end) * 1000)
            else:
                out.never_exact += 1
        out.failures = dict(failures)
        if (held := self.held) is not None:
            out.lags_ms, out.never_exact = held.lags_ms, held.never_exact
            out.audience_count_frames = held.audience_count_frames
            out.audience_seconds = held.audience_seconds
        return out

    async def close(self, limit_s: float) -> int:
        """Close every socket (WebSocket close 1000); abort those still open after `limit_s`."""
        self.closing = True
        everyone = self.clients + self.churners
        for c in everyone:
            if c.sock is not None and not c.connected:
                c.abort()  # still connecting
        open_ = [c for c in everyone if c.sock is not None]
        for c in open_:
            c.send_close(1000, "bench done")
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and not all(c.lost for c in open_):
            await asyncio.sleep(0.05)
        clean = sum(1 for c in open_ if c.lost)
        for c in open_:
            if not c.lost:
                c.abort()
        if self.poller is not None:
            self.poller.close()
        return clean


__all__ = [
    "PARTICIPANT_TAGS",
    "Churn",
    "Edge",
    "Fleet",
    "ProcResults",
    "SimClient",
    "Wave",
    "peek_tag",
]
