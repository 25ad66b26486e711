"""Chaos: the cluster as processes loses nothing while its parts are SIGKILLed one by one.

`stagecast bench chaos --database-url postgresql+asyncpg://...` starts `stagecast up
--cluster` in-process (`stagecast.cluster_up.ClusterStack`: 3 NATS nodes with R3 streams, 2
statekeepers sharing 8 partitions through leases, on a fresh database made on that server
and dropped afterwards, 2 edges, 2 forwarders), joins `--clients` SDK clients (`--speakers`
of them speakers, the rest viewers) spread over `--rooms` rooms (one per partition by
default) and both edges (each given both URLs). Every client sets its metadata to a value
unique in the run every `--period` s; speakers also send a data message. Then, one at a
time, with `--steady` s of load before each and recovery after (the killed part is
started again, as a supervisor would):

- `stream_leader`: SIGKILL the NATS node leading `STAGECAST_LOG`;
- `meta_leader`: SIGKILL the JetStream meta leader, once the streams it led were asked to
  elect leaders elsewhere (a graceful step down during the steady load);
- `statekeeper`: SIGKILL statekeeper-0 (the other takes its partitions over);
- `edge`: SIGKILL edge-1 (its clients resume on edge-0);
- `forwarder`: SIGKILL the forwarder carrying the media pair's publisher (forwarder-0
  without `--media`). The storm's clients send no media (an aiortc pair per client is too
  heavy for 2,000 of them): they check that signaling is unharmed; one media pair
  (`stagecast.bench.chaosmedia`: a 160x120 VP8 publisher and a subscriber, in a room of
  their own on edge-0) measures what the kill does to media.

Figures per fault: `acked_lost_<fault>` (acknowledged writes the log does not hold; goal
0), `duplicated_<fault>` (writes applied twice; goal 0), `write_gap_s_<fault>` (the
longest time no write was acknowledged, from 1 s before the kill until every client had one
acknowledged again), `flaps_<fault>` (clients whose edge survived and who saw a speaker
leave; goal 0), `counts_exact_<fault>` (1 when every room's roster is exactly its connected
clients afterwards); `takeover_s_statekeeper` (the kill to the first acknowledged write in
a room of a partition the killed statekeeper held); `media_gap_s_forwarder` (the longest time the
pair's subscriber decoded no frame, from 1 s before the kill until frames flowed again
through the surviving forwarder) and `media_resumed_s_forwarder` (the kill to that). Over
the run: `data_doubled` (data
messages a client received twice), `writes_acked`, `writes_refused`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console

from access.tokens import generate_token
from schemas import subjects
from schemas.models import Grant
from schemas.subjects import LEASES_BUCKET
from stagecast.bench import Result
from stagecast.bench.chaosload import Load, Member, audit, fresh_database, longest_gap
from stagecast.bench.chaosmedia import MediaPair, carrier
from stagecast.bench.stormhost import free_port_block
from stagecast.client import ConnectionState, ConnectOptions, join
from stagecast.cluster_up import ClusterConfig, ClusterStack
from stagecast.errors import Unavailable
from stagecast.server_api import RoomService

API_KEY = "chaos"
API_SECRET = "chaos-bench-secret-" + "x" * 16
SPEAKER = Grant(can_publish=True, can_subscribe=True, can_publish_data=True)
AUDIENCE = Grant(can_publish=False, can_subscribe=True, can_publish_data=False)
OPTIONS = ConnectOptions(
    connect_timeout=20.0, request_timeout=20.0, join_retry_window=60.0, backoff_max=1.0
)
FAULTS = ("stream_leader", "meta_leader", "statekeeper", "edge", "forwarder")
MEDIA_ROOM = "chaos-media"
MEDIA_START_S = 30.0
JOIN_BATCH = 50
COUNTS_WAIT_S = 30.0
STEPDOWN_WAIT_S = 20.0
console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("STAGECAST_DATABASE_URL"),
        help="a PostgreSQL server (asyncpg URL) on which a fresh database is made and dropped",
    )
    parser.add_argument("--clients", type=int, default=2_000)
    parser.add_argument("--speakers", type=int, default=40, help="of --clients")
    parser.add_argument("--rooms", type=int, default=8)
    parser.add_argument("--period", type=float, default=10.0, help="s between writes")
    parser.add_argument("--steady", type=float, default=10.0, help="s of load before a fault")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma list, in order")
    parser.add_argument("--recover-limit", type=float, default=60.0)
    parser.add_argument(
        "--retry-window",
        type=float,
        default=ConnectOptions().retry_window,
        help="s the clients send a write answered UNAVAILABLE again (the SDK's default; "
        "0: never, the behaviour before the SDKs retried)",
    )
    parser.add_argument("--data-dir", default=None, help="keep logs here (default: temp)")
    parser.add_argument(
        "--media",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a media pair across the forwarder kill (media_gap_s_forwarder; default on)",
    )


def rooms_over_partitions(count: int, partitions: int) -> list[str]:
    """`count` room ids, spread so that the first `partitions` fall in distinct partitions."""
    rooms: list[str] = []
    i = 0
    while len(rooms) < count:
        room = f"chaos-{i}"
        wanted = len(rooms) % partitions
        if subjects.partition_of(room, partitions) == wanted:
            rooms.append(room)
        i += 1
    return rooms


async def run(args: argparse.Namespace) -> list[Result]:
    if not args.database_url or not args.database_url.startswith("postgresql"):
        raise SystemExit("stagecast bench chaos: --database-url of PostgreSQL is required")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise SystemExit(f"stagecast bench chaos: unknown faults {unknown}; known: {FAULTS}")
    if not 0 < args.speakers <= args.clients:
        raise SystemExit("stagecast bench chaos: --speakers must be 1..--clients")
    logging.getLogger("stagecast.client").setLevel(logging.ERROR)
    logging.getLogger("stagecast.up").setLevel(logging.ERROR)
    logging.getLogger("aioice").setLevel(logging.WARNING)  # the media pair's ICE steps
    with contextlib.ExitStack() as exits:
        workdir = (
            Path(args.data_dir)
            if args.data_dir
            else Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="stagecast-chaos-")))
        )
        async with fresh_database(args.database_url) as database_url:
            config = ClusterConfig(
                database_url=database_url,
                port=free_port_block(2),
                data_dir=workdir,
                api_key=API_KEY,
                api_secret=API_SECRET,
                dev=False,
            )
            stack = ClusterStack(config)
            console.print(f"starting the cluster in {workdir}")
            await stack.start(log=lambda *_: None)
            try:
                return await Chaos(args, stack).run(faults)
            finally:
                await stack.stop()


class Chaos:
    """One run: the clients, the load, and the faults in turn."""

    def __init__(self, args: argparse.Namespace, stack: ClusterStack) -> None:
        self.args = args
        self.stack = stack
        self.loop = asyncio.get_running_loop()
        self.rooms = rooms_over_partitions(args.rooms, stack.cluster_config.partitions)
        self.sockets = [u.replace("http://", "ws://") + "/rtc" for u in stack.edge_urls]
        self.members: list[Member] = []
        self.results: list[Result] = []
        self.media: MediaPair | None = None
        self.options = dataclasses.replace(OPTIONS, retry_window=args.retry_window)

    async def run(self, faults: list[str]) -> list[Result]:
        api = RoomService(self.stack.edge_urls[0], API_KEY, API_SECRET)
        try:
            for room in self.rooms:
                await self.create_room(api, room)
            await self.join_all()
            if self.args.media and "forwarder" in faults:
                await self.create_room(api, MEDIA_ROOM)
                self.media = await self.join_media()
            load = Load(self.members, self.args.period)
            try:
                for fault in faults:
                    await self.phase(fault, load, api)
            finally:
                await load.close()
            nc = await self.stack.admin()
            found = await audit(nc, self.members)
        finally:
            if self.media is not None:
                await self.media.close()
            await asyncio.gather(*(m.room.leave() for m in self.members), return_exceptions=True)
            await api.aclose()
        for fault in faults:
            self.results.append(
                Result(f"acked_lost_{fault}", found.lost[fault], "writes", "goal 0")
            )
            self.results.append(
                Result(f"duplicated_{fault}", found.duplicated[fault], "writes", "goal 0")
            )
            refused = sum(m.refused[fault] for m in self.members)
            self.results.append(
                Result(f"writes_refused_{fault}", refused, "writes", "answered with an error")
            )
        acked = sum(len(m.acked) for m in self.members)
        self.results += [
            Result("acked_lost", sum(found.lost.values()), "writes", "whole run, goal 0"),
            Result("duplicated", sum(found.duplicated.values()), "writes", "whole run, goal 0"),
            Result("data_received", sum(len(m.data_seen) for m in self.members), "messages"),
            Result("data_doubled", sum(m.data_doubled for m in self.members), "messages"),
            Result("writes_acked", acked, "writes"),
            Result("writes_refused", sum(sum(m.refused.values()) for m in self.members), "writes"),
            Result("clients", len(self.members), "clients"),
        ]
        return self.results

    async def create_room(self, api: RoomService, room: str) -> None:
        """Create `room`, asking again while its partition is still being recovered."""
        deadline = self.loop.time() + COUNTS_WAIT_S
        while True:
            try:
                await api.create_room(room, departure_timeout=30)
                return
            except Unavailable:
                if self.loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def join_all(self) -> None:
        args = self.args
        started = self.loop.time()

        async def one(i: int) -> Member:
            speaker = i < args.speakers
            identity = f"s-{i}" if speaker else f"v-{i}"
            room_id = self.rooms[i % len(self.rooms)]
            token = generate_token(
                API_KEY,
                API_SECRET,
                room_id=room_id,
                participant_id=identity,
                is_viewer=not speaker,
                grant=SPEAKER if speaker else AUDIENCE,
            )
            order = [self.sockets[i % 2], self.sockets[(i + 1) % 2]]
            room = await join(order, token, options=self.options)
            return Member(identity, room_id, speaker, room)

        for first in range(0, args.clients, JOIN_BATCH):
            batch = range(first, min(args.clients, first + JOIN_BATCH))
            self.members += await asyncio.gather(*(one(i) for i in batch))
        console.print(f"joined {len(self.members)} clients in {self.loop.time() - started:.1f} s")

    async def join_media(self) -> MediaPair:
        """The media pair, joined on edge-0 (which the edge fault spares), decoding."""
        rooms = []
        for identity, speaker in (("media-pub", True), ("media-sub", False)):
            token = generate_token(
                API_KEY,
                API_SECRET,
                room_id=MEDIA_ROOM,
                participant_id=identity,
                is_viewer=not speaker,
                grant=SPEAKER if speaker else AUDIENCE,
            )
            rooms.append(await join(self.sockets, token, options=self.options))
        pair = MediaPair(rooms[0], rooms[1])
        await pair.start(MEDIA_START_S)
        console.print("media pair: the subscriber decodes the publisher's video")
        return pair

    async def phase(self, fault: str, load: Load, api: RoomService) -> None:
        load.resume(fault)
        if fault == "meta_leader":
            await self.streams_off_meta_leader()
        await asyncio.sleep(self.args.steady)
        survivors = [m for m in self.members if fault != "edge" or self.edge_of(m) == 0]
        left_before = {m.identity: m.speaker_left for m in survivors}
        killed_rooms: set[str] = set()
        if fault == "statekeeper":
            owner = self.stack.statekeeper_owner(self.stack.index_of("statekeeper-0"))
            owners = await self.stack.owners()
            held = {p for p, o in owners.items() if o == owner}
            partitions = self.stack.cluster_config.partitions
            killed_rooms = {r for r in self.rooms if subjects.partition_of(r, partitions) in held}
        restart = await self.kill(fault)
        t0 = self.loop.time()
        console.print(f"{fault}: killed; waiting for every client to write again")
        recovered = await self.recover(load, t0)
        gap = longest_gap(load.acks, t0 - 1.0, t0 + recovered)
        console.print(f"{fault}: every client wrote again after {recovered:.2f} s")
        if fault == "forwarder" and self.media is not None:
            await self.media_figures(t0)
        await restart()
        await load.pause(OPTIONS.request_timeout + 0.5)
        await asyncio.sleep(1.0)  # the last broadcasts
        flaps = sum(1 for m in survivors if m.speaker_left > left_before[m.identity])
        errors = sum((m.errors for m in self.members), collections.Counter[str]())
        for what, n in sorted(errors.items()):
            if what.startswith(f"{fault} "):
                console.print(f"{fault}: {n} writes refused with {what.split()[1]}")
        exact = await self.counts_exact(api)
        console.print(
            f"{fault}: longest write gap {gap:.2f} s; flaps {flaps}; counts exact {exact}"
        )
        self.results += [
            Result(f"write_gap_s_{fault}", gap, "s", "longest time no write was acknowledged"),
            Result(f"recover_s_{fault}", recovered, "s", "kill -> every client wrote again"),
            Result(f"flaps_{fault}", flaps, "clients", "goal 0"),
            Result(f"counts_exact_{fault}", 1.0 if exact else 0.0, "", "goal 1"),
        ]
        if killed_rooms:
            firsts = [t - t0 for t, room in load.ack_rooms if t >= t0 and room in killed_rooms]
            takeover = min(firsts) if firsts else float("inf")
            self.results.append(
                Result("takeover_s_statekeeper", takeover, "s", "kill -> first write answered")
            )

    async def media_figures(self, t0: float) -> None:
        """Wait for the media pair's frames to flow again; its RESULT lines."""
        assert self.media is not None
        resumed = await self.media.resumed(t0, self.args.recover_limit)
        gap = self.media.longest_gap(t0 - 1.0, t0 + resumed) if resumed < float("inf") else resumed
        console.print(f"forwarder: media flows again after {resumed:.2f} s; gap {gap:.2f} s")
        self.results += [
            Result(
                "media_gap_s_forwarder", gap, "s", "longest time the subscriber decoded nothing"
            ),
            Result("media_resumed_s_forwarder", resumed, "s", "kill -> media flowing again"),
        ]

    async def forwarder_to_kill(self) -> str:
        """The forwarder carrying the media pair's publisher (forwarder-0 without a pair)."""
        if self.media is not None:
            found = await carrier(await self.stack.admin())
            if found in self.stack.forwarder_ids:
                return f"forwarder-{self.stack.forwarder_ids.index(found)}"
            console.print("forwarder: no heartbeat names the media pair's; killing forwarder-0")
        return "forwarder-0"

    async def kill(self, fault: str) -> Callable[[], Awaitable[None]]:
        """SIGKILL the part `fault` names; returns how to start it again."""
        stack = self.stack
        cluster = stack.cluster
        assert cluster is not None
        if fault in ("stream_leader", "meta_leader"):
            if fault == "stream_leader":
                info = (
                    await (await stack.admin())
                    .jetstream(timeout=5)
                    .stream_info(subjects.LOG_STREAM)
                )
                name = info.cluster.leader if info.cluster is not None else None
            else:
                name = await cluster.meta_leader()
            if not name or name not in cluster.nodes:
                raise RuntimeError(f"{fault}: no leader to kill ({name!r})")
            node = cluster.nodes[name]
            led = [stream for stream, leader in (await self.leaders()).items() if leader == name]
            console.print(
                f"{fault}: SIGKILL nats node {name} (pid {node.pid}), leading "
                f"{', '.join(led) or 'no stream'}"
            )
            node.kill()

            async def restart_node() -> None:
                await node.start()
                await cluster.wait_meta_ready()

            return restart_node
        name = {"statekeeper": "statekeeper-0", "edge": "edge-1"}.get(fault) or (
            await self.forwarder_to_kill()
        )
        index = stack.index_of(name)
        console.print(f"{fault}: SIGKILL {name} (pid {stack.children[index].pid})")
        stack.kill(index)

        async def respawn() -> None:
            stack.respawn(index)
            if fault == "edge":
                await stack.wait_healthy()
            elif fault == "statekeeper":
                await stack.wait_statekeeper_ready(index)

        return respawn

    async def streams_off_meta_leader(self) -> None:
        """Ask every stream the meta leader leads to elect another leader (a graceful step
        down), so that killing the meta leader measures the meta leader alone."""
        cluster = self.stack.cluster
        assert cluster is not None
        meta = await cluster.meta_leader()
        nc = await self.stack.admin()
        deadline = self.loop.time() + STEPDOWN_WAIT_S
        while self.loop.time() < deadline:
            led = [s for s, leader in (await self.leaders()).items() if leader == meta]
            if not led:
                return
            for stream in led:
                with contextlib.suppress(Exception):
                    await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
            await asyncio.sleep(1.0)
        console.print(f"meta_leader: {meta} still leads a stream; the figures include it")

    async def leaders(self) -> dict[str, str]:
        """Stream -> the node leading it now, for the streams Stagecast keeps."""
        js = (await self.stack.admin()).jetstream(timeout=5)
        found: dict[str, str] = {}
        for stream in (subjects.LOG_STREAM, subjects.EVENTS_STREAM, f"KV_{LEASES_BUCKET}"):
            with contextlib.suppress(Exception):
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    found[stream] = info.cluster.leader
        return found

    async def recover(self, load: Load, t0: float) -> float:
        """Seconds from `t0` until every client had one write acknowledged."""
        limit = self.args.recover_limit

        async def one(member: Member) -> float:
            while self.loop.time() - t0 < limit:
                if await load.write(member):
                    return self.loop.time() - t0
                await asyncio.sleep(0.2)
            return float("inf")

        return max(await asyncio.gather(*(one(m) for m in self.members)))

    def edge_of(self, member: Member) -> int | None:
        connection = member.room._session.connection
        if connection is None:
            return None
        return self.sockets.index(connection.url) if connection.url in self.sockets else None

    async def counts_exact(self, api: RoomService) -> bool:
        """Whether every room's roster is exactly its connected clients (asked again while
        a partition has no statekeeper, up to `COUNTS_WAIT_S`)."""
        deadline = self.loop.time() + COUNTS_WAIT_S
        for room in self.rooms:
            expected = {
                m.identity
                for m in self.members
                if m.room_id == room and m.room.connection_state is ConnectionState.CONNECTED
            }
            while True:
                try:
                    found = await self.roster(api, room)
                except Unavailable as exc:
                    if self.loop.time() > deadline:
                        console.print(f"{room}: no roster: {exc}")
                        return False
                    await asyncio.sleep(0.5)
                    continue
                break
            if found != expected:
                console.print(
                    f"{room}: roster differs: {len(found - expected)} extra, "
                    f"{len(expected - found)} missing"
                )
                return False
        return True

    async def roster(self, api: RoomService, room: str) -> set[str]:
        found: set[str] = set()
        cursor: str | None = None
        while True:
            page = await api.list_participants(room, limit=500, cursor=cursor)
            found.update(p.id for p in page.participants)
            cursor = page.next_cursor
            if not cursor:
                return found


__all__ = ["FAULTS", "add_arguments", "rooms_over_partitions", "run"]
