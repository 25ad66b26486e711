"""The statekeeper's `/metrics`: the partitions it holds and their lag, the log streams,
and the edges and forwarders it hears (what `stagecast cluster status` shows).

Each statekeeper exports what it is the natural owner of: per partition it holds,
``stagecast_partition_owner{partition,owner} 1``, the last log sequence folded, whether
it has caught up, and its lag (events stored in the partition that it has not read yet:
its log consumer's pending count plus what the reader holds unread; a statekeeper
without leases folding several partitions with one reader leaves it out). A partition nobody
holds is on nobody's `/metrics`; summed over the statekeepers, each partition shows once.
Per Stagecast stream its replicas, whether it has a leader, its messages and last
sequence; per edge and forwarder heard within `HEARD_WITHIN_S`, its load from its
heartbeat. Labels are partition numbers (bounded by `--partitions`), stream names (a
closed set), and the ids of statekeepers, edges and forwarders (a few per cluster).

The facts that live in JetStream are asked for when `/metrics` is read (each question
bounded by `ASK_TIMEOUT_S`; an unanswered one leaves its samples out), so a scrape
shows the cluster as it is. `MetricsServer` answers ``GET /metrics`` over plain HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import nats.errors
import nats.js.errors
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas import subjects
from schemas.api import EdgeHeartbeat
from schemas.codec import SchemaError, decode
from schemas.media import ForwarderHeartbeat
from statekeeper.errors import MetricsListenFailed
from statekeeper.service import Statekeeper

log = logging.getLogger("stagecast.statekeeper.metrics")

ASK_TIMEOUT_S = 1.0
"""How long one JetStream question of a scrape may take."""
HEARD_WITHIN_S = 5.0
"""An edge or forwarder whose last heartbeat is older is left out."""
STREAMS = (subjects.LOG_STREAM, subjects.EVENTS_STREAM)
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0

Held = Callable[[], list[tuple[int, Statekeeper]]]
"""The partitions this process holds now, each with the `Statekeeper` folding it."""


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionFacts:
    partition: int
    applied_seq: int
    caught_up: bool
    lag: int | None
    """Events stored in the partition and not read yet (None: not known right now)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamFacts:
    name: str
    replicas: int
    has_leader: bool
    messages: int
    last_seq: int


@dataclasses.dataclass(slots=True)
class Heard:
    """The last heartbeat of one edge or forwarder, and when it came (monotonic)."""

    beat: EdgeHeartbeat | ForwarderHeartbeat
    at: float


class StatekeeperMetrics(Collector):
    """Collects the partition, stream and service facts of one statekeeper process."""

    def __init__(self, nc: Any, owner: str, held: Held) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=ASK_TIMEOUT_S)
        self.owner = owner
        self.held = held
        self.heard: dict[tuple[str, str], Heard] = {}
        self.partitions: list[PartitionFacts] = []
        self.streams: list[StreamFacts] = []
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(self)
        self._subs: list[Any] = []

    async def start(self) -> None:
        """Listen to edge and forwarder heartbeats."""
        for subject in (subjects.EDGE_HEARTBEAT, subjects.FORWARDER_HEARTBEAT):
            self._subs.append(await self.nc.subscribe(subject, cb=self._on_beat))

    async def stop(self) -> None:
        """Stop listening. Idempotent."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_beat(self, msg: Any) -> None:
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        now = time.monotonic()
        if isinstance(beat, EdgeHeartbeat):
            self.heard["edge", beat.edge_id] = Heard(beat, now)
        elif isinstance(beat, ForwarderHeartbeat):
            if beat.stopping:
                self.heard.pop(("forwarder", beat.forwarder_id), None)
            else:
                self.heard["forwarder", beat.forwarder_id] = Heard(beat, now)

    # ----------------------------------------------------------------------- scrape

    async def render(self) -> bytes:
        """Ask JetStream for the current facts, then every collector's samples as text."""
        held = sorted(self.held(), key=lambda pk: pk[0])
        self.partitions = list(await asyncio.gather(*(self._partition(p, k) for p, k in held)))
        found = await asyncio.gather(*(self._stream(name) for name in STREAMS))
        self.streams = [s for s in found if s is not None]
        cutoff = time.monotonic() - HEARD_WITHIN_S
        for key in [k for k, h in self.heard.items() if h.at < cutoff]:
            del self.heard[key]
        return generate_latest(self.registry)

    async def _partition(self, p: int, keeper: Statekeeper) -> PartitionFacts:
        lag: int | None = None
        reader = keeper.log_reader
        name = reader.consumer_name if reader is not None else None
        if reader is not None and name is not None and len(keeper.partitions) == 1:
            try:
                info = await self.js.consumer_info(subjects.LOG_STREAM, name)
                lag = int(info.num_pending or 0) + reader.buffered
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("partition %d: consumer info not read (%r)", p, exc)
        return PartitionFacts(p, keeper.applied_seq, keeper.caught_up, lag)

    async def _stream(self, name: str) -> StreamFacts | None:
        try:
            info = await self.js.stream_info(name)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("stream %s: info not read (%r)", name, exc)
            return None
        cluster = info.cluster
        return StreamFacts(
            name=name,
            replicas=int(info.config.num_replicas or 1),
            has_leader=cluster is None or bool(cluster.leader),
            messages=int(info.state.messages),
            last_seq=int(info.state.last_seq),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The families of the last `render`'s facts (the prometheus_client protocol)."""
        owner = GaugeMetricFamily(
            "stagecast_partition_owner",
            "1 for each log partition this statekeeper holds, labelled with its id.",
            labels=["partition", "owner"],
        )
        applied = _partition_gauge("stagecast_partition_applied_seq", "Last log sequence folded.")
        caught_up = _partition_gauge(
            "stagecast_partition_caught_up", "1 once the partition has recovered and follows."
        )
        lag = _partition_gauge(
            "stagecast_partition_lag_events", "Events stored in the partition not yet read."
        )
        for facts in self.partitions:
            label = str(facts.partition)
            owner.add_metric([label, self.owner], 1)
            applied.add_metric([label], facts.applied_seq)
            caught_up.add_metric([label], int(facts.caught_up))
            if facts.lag is not None:
                lag.add_metric([label], facts.lag)
        yield owner
        yield applied
        yield caught_up
        yield lag
        yield from self._stream_families()
        yield from self._service_families()

    def _stream_families(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "replicas": GaugeMetricFamily(
                "stagecast_stream_replicas", "Replicas of the stream.", labels=["stream"]
            ),
            "leader": GaugeMetricFamily(
                "stagecast_stream_has_leader",
                "1 while the stream has a leader (appends to it can succeed).",
                labels=["stream"],
            ),
            "messages": GaugeMetricFamily(
                "stagecast_stream_messages", "Messages stored in the stream.", labels=["stream"]
            ),
            "last_seq": GaugeMetricFamily(
                "stagecast_stream_last_seq", "The stream's last sequence.", labels=["stream"]
            ),
        }
        for s in self.streams:
            families["replicas"].add_metric([s.name], s.replicas)
            families["leader"].add_metric([s.name], int(s.has_leader))
            families["messages"].add_metric([s.name], s.messages)
            families["last_seq"].add_metric([s.name], s.last_seq)
        yield from families.values()

    def _service_families(self) -> Iterator[GaugeMetricFamily]:
        sockets = GaugeMetricFamily(
            "stagecast_edge_load_sockets",
            "Open sockets of each edge heard from, from its heartbeat.",
            labels=["edge"],
        )
        fields = {
            "peer_connections": "Peer connections",
            "published_tracks": "Tracks published",
            "legs": "Subscriber legs",
            "packets_per_s": "Packets forwarded per second",
        }
        forwarder = {
            field: GaugeMetricFamily(
                f"stagecast_forwarder_load_{field}",
                f"{text} of each forwarder heard from, from its heartbeat.",
                labels=["forwarder"],
            )
            for field, text in fields.items()
        }
        for (kind, name), heard in sorted(self.heard.items()):
            beat = heard.beat
            if kind == "edge" and isinstance(beat, EdgeHeartbeat):
                sockets.add_metric([name], beat.sockets)
            elif isinstance(beat, ForwarderHeartbeat):
                for field, family in forwarder.items():
                    family.add_metric([name], getattr(beat, field))
        yield sockets
        yield from forwarder.values()


def _partition_gauge(name: str, help_text: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, labels=["partition"])


class MetricsServer:
    """``GET /metrics`` over HTTP/1.1 (one request per connection); anything else 404,
    a request that cannot be read 400."""

    def __init__(self, metrics: StatekeeperMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; `port` becomes the bound port (0 picks a free one).
        `MetricsListenFailed` when the address cannot be bound."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise MetricsListenFailed(self.host, self.port, str(exc)) from None
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close open connections. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request head too large")
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            await _reply(writer, 400, b"bad request\n", "text/plain")
            return
        except ConnectionError:
            writer.close()
            return
        if method != "GET" or target.split("?", 1)[0] != "/metrics":
            await _reply(writer, 404, b"not found: GET /metrics\n", "text/plain")
            return
        try:
            body = await self.metrics.render()
        except Exception:
            log.exception("rendering /metrics failed")
            await _reply(writer, 500, b"internal error\n", "text/plain")
            return
        await _reply(writer, 200, body, CONTENT_TYPE_PLAIN_0_0_4)


async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}
    head = (
        f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode() + body)
        await writer.drain()
    writer.close()


__all__ = ["MetricsServer", "StatekeeperMetrics"]
