"""`stagecast cluster status`: streams, consumers, partitions and services, read-only.

For every stream (Stagecast's `STAGECAST_LOG` and `STAGECAST_EVENTS` first): its replicas,
the node leading it, each follower's state (current, lagging by how many operations, or
offline) and its messages; for every consumer: its replicas and how far behind it is (a
statekeeper's consumer is its lag); for every log partition: the statekeeper holding its
lease (the `STAGECAST_LEASES` bucket); for every edge and forwarder: its load, from the
heartbeats heard in `HEARTBEAT_WAIT_S`. Nothing is changed. The exit status is 1 when a
Stagecast stream is missing or has no leader (appends to it fail), 0 otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StreamInfo

from roomlog.connect import NatsAuth, nats_servers, redact_url
from schemas.api import EdgeHeartbeat
from schemas.codec import SchemaError, decode
from schemas.media import ForwarderHeartbeat
from schemas.subjects import (
    EDGE_HEARTBEAT,
    EVENTS_STREAM,
    FORWARDER_HEARTBEAT,
    LEASES_BUCKET,
    LOG_STREAM,
)
from statekeeper.leases import LEASE_PREFIX

STAGECAST_STREAMS = (LOG_STREAM, EVENTS_STREAM)
CONNECT_TIMEOUT = 5.0
"""Seconds to reach any node of the URL list."""
HEARTBEAT_WAIT_S = 1.5
"""How long heartbeats are listened for (edges and forwarders send one each second)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamRow:
    """What `cluster status` shows of one stream."""

    name: str
    replicas: int
    leader: str
    """The leading node's name ("" during an election; "-" on a server without clustering)."""
    followers: tuple[str, ...]
    """``<node> current``, ``<node> lag <n>`` or ``<node> offline``."""
    messages: int
    last_seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerRow:
    """What `cluster status` shows of one consumer."""

    stream: str
    name: str
    replicas: int
    pending: int
    """Messages stored after the consumer's position: how far behind it is."""
    ack_pending: int
    last_delivered: int


async def lease_owners(js: JetStreamContext, partitions: int | None = None) -> dict[int, str]:
    """Partition -> the statekeeper whose lease is stored for it ({} without leases).

    With `partitions` known, each key is read directly (no consumer is made for a key
    listing: cheap enough to poll). A lease whose owner died stays stored until another
    statekeeper takes it over (a TTL later): during a takeover this still names the dead
    owner."""
    try:
        kv = await js.key_value(LEASES_BUCKET)
        if partitions is None:
            keys = await kv.keys()
        else:
            keys = [f"{LEASE_PREFIX}{p}" for p in range(partitions)]
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
        return {}
    owners: dict[int, str] = {}
    for key in keys:
        number = key.removeprefix(LEASE_PREFIX)
        if not key.startswith(LEASE_PREFIX) or not number.isdigit():
            continue
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            owners[int(number)] = entry.value.decode()
    return owners


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceLoad:
    """An edge or forwarder as its last heartbeat described it."""

    kind: str
    """``edge`` or ``forwarder``."""
    name: str
    load: str


async def service_loads(nc: NATS, wait: float = HEARTBEAT_WAIT_S) -> list[ServiceLoad]:
    """The edges and forwarders heard from within `wait` seconds, with their load."""
    heard: dict[tuple[str, str], str] = {}

    async def on_beat(msg: Msg) -> None:
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        if isinstance(beat, EdgeHeartbeat):
            heard["edge", beat.edge_id] = f"{beat.sockets} sockets"
        elif isinstance(beat, ForwarderHeartbeat) and not beat.stopping:
            heard["forwarder", beat.forwarder_id] = (
                f"{beat.peer_connections} peer connections, {beat.published_tracks} tracks, "
                f"{beat.legs} legs, {beat.packets_per_s} packets/s"
            )

    subs = [
        await nc.subscribe(EDGE_HEARTBEAT, cb=on_beat),
        await nc.subscribe(FORWARDER_HEARTBEAT, cb=on_beat),
    ]
    try:
        await asyncio.sleep(wait)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    return [ServiceLoad(kind, name, load) for (kind, name), load in sorted(heard.items())]


def stream_row(info: StreamInfo) -> StreamRow:
    cluster = info.cluster
    followers: list[str] = []
    leader = "-"
    if cluster is not None:
        leader = cluster.leader or ""
        for peer in cluster.replicas or []:
            if peer.offline:
                followers.append(f"{peer.name} offline")
            elif peer.current:
                followers.append(f"{peer.name} current")
            else:
                followers.append(f"{peer.name} lag {peer.lag or 0}")
    return StreamRow(
        name=str(info.config.name),
        replicas=int(info.config.num_replicas or 1),
        leader=leader,
        followers=tuple(followers),
        messages=int(info.state.messages),
        last_seq=int(info.state.last_seq),
    )


def consumer_row(info: ConsumerInfo) -> ConsumerRow:
    # A consumer's configured replicas are 0 when it follows its stream's: count its peers.
    cluster = info.cluster
    replicas = int(info.config.num_replicas or 0) or 1
    if cluster is not None and cluster.leader:
        replicas = 1 + len(cluster.replicas or [])
    return ConsumerRow(
        stream=info.stream_name,
        name=info.name,
        replicas=replicas,
        pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
        last_delivered=int(info.delivered.stream_seq or 0) if info.delivered else 0,
    )


def problems(streams: Sequence[StreamRow]) -> list[str]:
    """Why appends to a Stagecast stream would fail now ([] when they would not)."""
    found = {s.name: s for s in streams}
    out: list[str] = []
    for name in STAGECAST_STREAMS:
        row = found.get(name)
        if row is None:
            out.append(f"{name} does not exist (no edge or statekeeper has started yet)")
        elif not row.leader:
            out.append(f"{name} has no leader (an election is under way, or no majority)")
    return out


def render(
    streams: Sequence[StreamRow],
    consumers: Sequence[ConsumerRow],
    owners: dict[int, str] | None = None,
    services: Sequence[ServiceLoad] = (),
) -> list[str]:
    """The report's lines: streams, consumers, partitions (`owners`), edges and forwarders
    (`services`), then any problem."""
    order = {name: i for i, name in enumerate(STAGECAST_STREAMS)}
    ranked = sorted(streams, key=lambda s: (order.get(s.name, len(order)), s.name))
    lines = ["streams"]
    lines.append(
        f"  {'name':<20} {'replicas':>8}  {'leader':<12} {'messages':>10} {'last_seq':>10}"
        "  followers"
    )
    for s in ranked:
        lines.append(
            f"  {s.name:<20} {s.replicas:>8}  {s.leader or '(none)':<12} {s.messages:>10} "
            f"{s.last_seq:>10}  {', '.join(s.followers) or '-'}"
        )
    lines.append("consumers")
    if not consumers:
        lines.append("  (none)")
    else:
        lines.append(
            f"  {'stream':<20} {'name':<28} {'replicas':>8} {'pending':>10} {'ack_pending':>11}"
            f" {'delivered':>10}"
        )
        for c in sorted(consumers, key=lambda c: (order.get(c.stream, len(order)), c.name)):
            lines.append(
                f"  {c.stream:<20} {c.name:<28} {c.replicas:>8} {c.pending:>10} "
                f"{c.ack_pending:>11} {c.last_delivered:>10}"
            )
    if owners:
        lines.append("partitions")
        lines.append(f"  {'partition':>9}  owner")
        lines.extend(f"  {p:>9}  {owner}" for p, owner in sorted(owners.items()))
    lines.append("services")
    if not services:
        lines.append("  (no heartbeat heard)")
    lines.extend(f"  {s.kind:<10} {s.name:<28} {s.load}" for s in services)
    lines.extend(f"problem: {p}" for p in problems(streams))
    return lines


async def cluster_status(
    url: str, *, auth: NatsAuth | None = None, out: Callable[[str], None] = print
) -> int:
    """Print the status of the NATS at `url` (comma-separated for a cluster), logged in with
    the password in `url` or `auth`'s files (the admin role's); the exit status."""
    failures: list[Exception] = []
    shown = redact_url(url)

    async def on_error(exc: Exception) -> None:  # reported once below, not per attempt
        failures.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers=nats_servers(url),
                name="stagecast-cluster-status",
                connect_timeout=2,
                max_reconnect_attempts=0,
                allow_reconnect=False,
                error_cb=on_error,
                **(auth or NatsAuth()).connect_options(),
            ),
            CONNECT_TIMEOUT,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        reason = failures[-1] if failures else exc
        out(f"cannot reach NATS at {shown}: {type(reason).__name__}: {reason}")
        return 2
    try:
        js = nc.jetstream(timeout=5)
        streams = [stream_row(info) for info in await js.streams_info()]
        consumers: list[ConsumerRow] = []
        for row in streams:
            consumers += [consumer_row(c) for c in await js.consumers_info(row.name)]
        owners = await lease_owners(js)
        services = await service_loads(nc)
    except (nats.errors.Error, TimeoutError) as exc:
        out(f"JetStream at {shown} does not answer: {type(exc).__name__}: {exc}")
        return 2
    finally:
        await asyncio.shield(nc.close())
    for line in render(streams, consumers, owners, services):
        out(line)
    return 1 if problems(streams) else 0


__all__ = [
    "ConsumerRow",
    "ServiceLoad",
    "StreamRow",
    "cluster_status",
    "consumer_row",
    "lease_owners",
    "problems",
    "render",
    "service_loads",
    "stream_row",
]
