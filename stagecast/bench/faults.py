"""Faults: a room under a steady load survives a crash of each part, and of NATS.

`stagecast bench faults` starts a private nats-server, a statekeeper and two edges as
processes (`stagecast.up.Stack`), joins `--speakers` + `--viewers` SDK clients (each with
its own identity, spread over both edges, every one given both URLs) and has each set its
metadata to a counter every `--period` seconds. Then, in turn, with `--steady` seconds of
load between them:

- `statekeeper`: SIGKILL the statekeeper, start it again (a supervisor's restart);
- `edge`: SIGKILL one of the two edges (its clients resume on the other), start it again
  after the phase;
- `nats_<D>s`: SIGKILL nats-server, start it again on the same port and store after D s
  (`--nats-outages`, default 2, 6 and 15).

The load goes on through each fault. When the part is back (`t0`), every client sets its
metadata until one write is acknowledged; then the load pauses and the roster is checked
against what each client was told. Figures, per fault:

- `recover_s_<fault>`: t0 -> the last client's first acknowledged write (for the edge kill,
  t0 is the kill);
- `acked_lost_<fault>`: clients whose metadata in the roster (`RoomService`) is older than
  their last acknowledged write (goal 0);
- `wrongly_removed_<fault>`: clients missing from the roster or disconnected (goal 0);
- `flaps_<fault>`: `participant_left` public events, plus `participant_joined` beyond one
  per identity, during the phase (goal 0: nobody left);
- `resumed_same_sid_ratio` (edge kill only): clients of the killed edge holding the same
  sid afterwards (goal 1.0).

And over the whole run: `acked_lost`, `flaps`, `wrongly_removed` (sums), and
`writes_acked` / `writes_refused`: the metadata writes acknowledged and refused (the
refused ones are the faults as the clients saw them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import random
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.msg import Msg
from rich.console import Console

from access.tokens import generate_token
from roomlog.connect import NatsAuth, connect
from roomlog.natslink import NatsLink
from roomlog.roles import Role
from schemas import subjects
from schemas.codec import SchemaError, decode
from schemas.events import ParticipantJoinedEvent, ParticipantLeftEvent
from schemas.models import Grant
from stagecast.bench import Result
from stagecast.bench.storm import free_port_block
from stagecast.client import ConnectionState, ConnectOptions, Room, join
from stagecast.errors import StagecastError
from stagecast.server_api import RoomService
from stagecast.up import Stack, UpConfig

API_KEY = "faults"
API_SECRET = "faults-bench-secret-" + "x" * 16
ROOM = "faults"
SPEAKER = Grant(can_publish=True, can_subscribe=True, can_publish_data=True)
AUDIENCE = Grant(can_publish=False, can_subscribe=True, can_publish_data=False)
OPTIONS = ConnectOptions(
    connect_timeout=15.0, request_timeout=5.0, join_retry_window=30.0, backoff_max=1.0
)
console = Console(stderr=True)
log = logging.getLogger("stagecast.bench")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speakers", type=int, default=20)
    parser.add_argument("--viewers", type=int, default=280)
    parser.add_argument("--period", type=float, default=5.0, help="s between metadata writes")
    parser.add_argument("--steady", type=float, default=10.0, help="s of load between faults")
    parser.add_argument(
        "--nats-outages", default="2,6,15", help="comma-separated outage lengths in s"
    )
    parser.add_argument("--recover-limit", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=0, help="first edge port (0: free ports)")
    parser.add_argument("--data-dir", default=None, help="keep logs here (default: a temp dir)")


@dataclasses.dataclass(eq=False)
class Member:
    """One SDK client and what it was told about its own writes."""

    identity: str
    room: Room
    written: int = 0
    """The last counter it sent."""
    acked: int = 0
    """The last counter acknowledged."""
    failures: int = 0
    successes: int = 0
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    """One write at a time, so the log holds them in the order they were counted."""

    async def write(self) -> bool:
        async with self.lock:
            self.written += 1
            value = self.written
            try:
                await self.room.local_participant.set_metadata(str(value))
            except StagecastError:
                self.failures += 1
                return False
            self.acked = max(self.acked, value)
            self.successes += 1
            return True


class Load:
    """Every member writes its metadata every `period` s, until paused."""

    def __init__(self, members: list[Member], period: float) -> None:
        self.members = members
        self.period = period
        self._running = asyncio.Event()
        self._tasks = [asyncio.create_task(self._loop(m)) for m in members]

    def resume(self) -> None:
        self._running.set()

    async def pause(self) -> None:
        """Stop new writes and wait for the ones in flight (bounded by the request timeout)."""
        self._running.clear()
        await asyncio.sleep(OPTIONS.request_timeout + 0.5)

    async def _loop(self, member: Member) -> None:
        await asyncio.sleep(random.uniform(0, self.period))
        while True:
            await self._running.wait()
            await member.write()
            await asyncio.sleep(self.period * random.uniform(0.9, 1.1))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def recover(members: list[Member], t0: float, limit: float) -> float:
    """Seconds from `t0` until every member had one write acknowledged (writes retried)."""
    loop = asyncio.get_running_loop()

    async def one(member: Member) -> float:
        while loop.time() - t0 < limit:
            if await member.write():
                return loop.time() - t0
            await asyncio.sleep(0.1)
        return float("inf")

    times = await asyncio.gather(*(one(m) for m in members))
    return max(times)


async def roster(api: RoomService) -> dict[str, str]:
    """Identity -> metadata of everyone in the room (every page)."""
    found: dict[str, str] = {}
    cursor: str | None = None
    while True:
        page = await api.list_participants(ROOM, limit=500, cursor=cursor)
        found.update((p.id, p.metadata) for p in page.participants)
        cursor = page.next_cursor
        if not cursor:
            return found


class PublicEvents:
    """Counts the room's public events as they are stored (an ordered consumer)."""

    def __init__(self) -> None:
        self.left = 0
        self.joined: dict[str, int] = {}

    async def start(self, nats_url: str, auth: NatsAuth | None) -> None:
        self.nc = await connect(
            nats_url,
            name="stagecast-bench-faults",
            link=NatsLink("bench", log),
            role=Role.ADMIN.value,
            auth=auth,
        )
        js = self.nc.jetstream()
        self.sub = await js.subscribe(
            subjects.room_events(ROOM), ordered_consumer=True, cb=self._on_msg
        )

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except SchemaError:
            return
        if isinstance(event, ParticipantLeftEvent):
            self.left += 1
        elif isinstance(event, ParticipantJoinedEvent):
            pid = event.participant.id
            self.joined[pid] = self.joined.get(pid, 0) + 1

    def flaps(self) -> int:
        return self.left + sum(n - 1 for n in self.joined.values() if n > 1)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


@dataclasses.dataclass
class Phase:
    name: str
    recover_s: float
    acked_lost: int
    wrongly_removed: int
    flaps: int
    same_sid_ratio: float | None = None


async def check(
    name: str,
    members: list[Member],
    api: RoomService,
    events: PublicEvents,
    flaps_before: int,
    recover_s: float,
) -> Phase:
    present = await roster(api)
    lost = 0
    removed = 0
    for m in members:
        if m.identity not in present or m.room.connection_state is not ConnectionState.CONNECTED:
            removed += 1
            continue
        value = present[m.identity]
        if (int(value) if value.isdigit() else 0) < m.acked:
            lost += 1
    await asyncio.sleep(1.0)  # let the last public events arrive
    phase = Phase(name, recover_s, lost, removed, events.flaps() - flaps_before)
    console.print(
        f"{name}: recovered in {recover_s:.2f} s; acked lost {lost}, wrongly removed "
        f"{removed}, flaps {phase.flaps}"
    )
    return phase


def edge_of(member: Member, urls: list[str]) -> int | None:
    connection = member.room._session.connection
    if connection is None:
        return None
    for i, url in enumerate(urls):
        if connection.url == url:
            return i
    return None


async def run(args: argparse.Namespace) -> list[Result]:
    logging.getLogger("stagecast.client").setLevel(logging.WARNING)  # one line per retry
    outages = [float(x) for x in args.nats_outages.split(",") if x.strip()]
    with contextlib.ExitStack() as exits:
        workdir = (
            Path(args.data_dir)
            if args.data_dir
            else Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="stagecast-faults-")))
        )
        port = args.port or free_port_block(2)
        config = UpConfig(
            port=port,
            data_dir=workdir,
            edges=2,
            forwarders=0,
            api_key=API_KEY,
            api_secret=API_SECRET,
            dev=False,
        )
        stack = Stack(config)
        console.print(f"starting nats-server, a statekeeper and 2 edges in {workdir}")
        await stack.start(log=lambda *_: None)
        try:
            return await _run(args, stack, outages)
        finally:
            await stack.stop()


async def _run(args: argparse.Namespace, stack: Stack, outages: list[float]) -> list[Result]:
    urls = list(stack.edge_urls)
    sockets = [u.replace("http://", "ws://") + "/rtc" for u in urls]
    events = PublicEvents()
    await events.start(stack.nats_url, stack.auth_for(Role.ADMIN))
    api = RoomService(urls[0], API_KEY, API_SECRET)
    await api.create_room(ROOM, departure_timeout=20)
    members: list[Member] = []
    loop = asyncio.get_running_loop()
    try:
        console.print(f"joining {args.speakers} speakers and {args.viewers} viewers")
        started = loop.time()

        async def one(i: int) -> Member:
            viewer = i >= args.speakers
            identity = f"v-{i}" if viewer else f"s-{i}"
            token = generate_token(
                API_KEY,
                API_SECRET,
                room_id=ROOM,
                participant_id=identity,
                is_viewer=viewer,
                grant=AUDIENCE if viewer else SPEAKER,
            )
            order = [sockets[i % 2], sockets[(i + 1) % 2]]
            room = await join(order, token, options=OPTIONS)
            return Member(identity, room)

        total = args.speakers + args.viewers
        for first in range(0, total, 50):
            batch = range(first, min(total, first + 50))
            members += await asyncio.gather(*(one(i) for i in batch))
        console.print(f"joined {len(members)} in {loop.time() - started:.1f} s")
        load = Load(members, args.period)
        phases: list[Phase] = []

        async def phase(
            name: str, fault: Callable[[], Awaitable[float]], same_sid: bool = False
        ) -> None:
            load.resume()
            await asyncio.sleep(args.steady)
            flaps_before = events.flaps()
            sids = {m.identity: m.room.local_participant.sid for m in members}
            killed_edge_members = [m for m in members if edge_of(m, sockets) == 1]
            t0 = await fault()  # the load goes on through the fault
            recover_s = await recover(members, t0, args.recover_limit)
            await load.pause()
            result = await check(name, members, api, events, flaps_before, recover_s)
            if same_sid:
                same = sum(
                    1
                    for m in killed_edge_members
                    if m.room.local_participant.sid == sids[m.identity]
                )
                result.same_sid_ratio = same / max(1, len(killed_edge_members))
                console.print(
                    f"{name}: {same} of {len(killed_edge_members)} clients of the killed edge "
                    "kept their sid"
                )
            phases.append(result)

        async def kill_statekeeper() -> float:
            stack.kill(0)
            await asyncio.sleep(1.0)
            stack.respawn(0)
            return loop.time()

        async def kill_edge() -> float:
            stack.kill(2)  # the second edge
            return loop.time()

        await phase("statekeeper", kill_statekeeper)
        await phase("edge", kill_edge, same_sid=True)
        stack.respawn(2)
        await stack.wait_healthy()
        for seconds in outages:

            async def kill_nats(seconds: float = seconds) -> float:
                assert stack.nats is not None
                stack.nats.kill()
                await asyncio.sleep(seconds)
                await stack.nats.start()
                return loop.time()

            await phase(f"nats_{seconds:g}s", kill_nats)
        await load.close()
    finally:
        await asyncio.gather(*(m.room.leave() for m in members), return_exceptions=True)
        await events.close()
        await api.aclose()
    writes = (sum(m.successes for m in members), sum(m.failures for m in members))
    return _figures(phases, *writes)


def _figures(phases: list[Phase], acked: int, refused: int) -> list[Result]:
    results: list[Result] = []
    for p in phases:
        results.append(
            Result(f"recover_s_{p.name}", p.recover_s, "s", "t0 -> every client working")
        )
        results.append(Result(f"acked_lost_{p.name}", p.acked_lost, "clients", "goal 0"))
        results.append(Result(f"wrongly_removed_{p.name}", p.wrongly_removed, "clients", "goal 0"))
        results.append(Result(f"flaps_{p.name}", p.flaps, "events", "goal 0"))
        if p.same_sid_ratio is not None:
            results.append(Result("resumed_same_sid_ratio", p.same_sid_ratio, "", "goal 1.0"))
    results.append(Result("acked_lost", sum(p.acked_lost for p in phases), "clients", "all faults"))
    results.append(Result("flaps", sum(p.flaps for p in phases), "events", "all faults"))
    results.append(
        Result("wrongly_removed", sum(p.wrongly_removed for p in phases), "clients", "all faults")
    )
    results.append(Result("writes_acked", acked, "writes", "metadata writes acknowledged"))
    results.append(Result("writes_refused", refused, "writes", "answered with an error"))
    return results
