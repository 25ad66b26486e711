"""Statekeeper takeover: two statekeepers share the partitions; one is killed.

Each run starts two `stagecast statekeeper` processes over one PostgreSQL database
(`--database-url`, required: several statekeepers need it) and a private nats-server,
waits until they hold half the partitions each, fills one room per partition with
speakers and viewers, then SIGKILLs one. The figure is the time from the kill to the
answer to a join into one of the killed statekeeper's rooms: its lease lapsing
(`--lease-ttl`) plus the survivor's recovery of that partition from the snapshots and the
log. Every run adds to the same log and database, so later runs recover more.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from roomlog.log import RoomLog
from schemas import subjects
from schemas.client import JoinAccepted
from schemas.clock import now_ms
from schemas.codec import decode
from schemas.log import JoinRequested
from stagecast.bench import Result, median
from stagecast.bench.harness import private_nats, start_statekeeper, stop_child
from stagecast.bench.workload import VIEWER_GRANT, storm
from statekeeper.leases import lease_key
from statekeeper.leasing import BUCKET

READY_LIMIT_S = 60.0
ANSWER_LIMIT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", required=True, help="PostgreSQL (asyncpg) URL")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--viewers", type=int, default=2_000, help="viewers per room")
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)


async def run(args: argparse.Namespace) -> list[Result]:
    if not args.database_url.startswith("postgresql"):
        raise SystemExit("stagecast bench takeover: --database-url must be PostgreSQL")
    n = args.partitions
    rooms = {p: _room_in(p, n) for p in range(n)}
    takeovers: list[float] = []
    probes = itertools.count()
    async with private_nats() as (server, nc, workdir):
        room_log = RoomLog(nc.jetstream(), partitions=n)
        await room_log.ensure()
        for room_id in rooms.values():
            events = storm(room_id, viewers=args.viewers, speakers=5, churn=0.0, replies=False)
            await room_log.append_many((e, f"{room_id}:{i}") for i, e in enumerate(events))
        for run_no in range(args.runs):
            options = ("--partitions", str(n), "--lease-ttl", str(args.lease_ttl))
            procs = [
                start_statekeeper(
                    server.url, args.database_url, workdir / f"sk{run_no}{x}.log", *options
                )
                for x in "ab"
            ]
            try:
                held = await _split(nc, n)
                for room_id in rooms.values():  # everything folded and answering
                    await _answered(nc, room_log, room_id, next(probes))
                owners = sorted(set(held.values()))
                victim_owner = owners[run_no % 2]
                victim = next(rooms[p] for p, o in held.items() if o == victim_owner)
                # which process is it? the one whose log names its owner id
                killed = next(
                    proc
                    for proc, x in zip(procs, "ab", strict=True)
                    if victim_owner in (workdir / f"sk{run_no}{x}.log").read_text()
                )
                killed.send_signal(signal.SIGKILL)
                started = time.perf_counter()
                killed.wait(10)
                await _answered(nc, room_log, victim, next(probes))
                takeovers.append(time.perf_counter() - started)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        await stop_child(proc)
    return [
        Result(
            "takeover_s",
            median(takeovers),
            "s",
            f"median of {args.runs}: {n} partitions, 2 statekeepers, "
            f"{args.viewers} viewers a room, --lease-ttl {args.lease_ttl}",
        ),
        Result("takeover_max_s", max(takeovers), "s", "slowest run"),
    ]


def _room_in(partition: int, partitions: int) -> str:
    return next(
        f"room-{i}"
        for i in itertools.count()
        if subjects.partition_of(f"room-{i}", partitions) == partition
    )


async def _split(nc: NATS, partitions: int) -> dict[int, str]:
    """Wait until two statekeepers hold the partitions evenly; who holds which."""
    deadline = time.perf_counter() + READY_LIMIT_S
    while time.perf_counter() < deadline:
        try:
            kv = await nc.jetstream().key_value(BUCKET)
            held: dict[int, str] = {}
            for p in range(partitions):
                entry = await kv.get(lease_key(p))
                if entry.value:
                    held[p] = entry.value.decode()
            counts = sorted(list(held.values()).count(o) for o in set(held.values()))
            if len(held) == partitions and counts == [
                partitions // 2,
                partitions - partitions // 2,
            ]:
                return held
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the statekeepers did not split {partitions} partitions")


async def _answered(nc: NATS, room_log: RoomLog, room_id: str, probe: int) -> None:
    """Append a join into `room_id` and wait for its answer."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        event = JoinRequested(
            room_id=room_id,
            at=now_ms(),
            sid=f"PA_probe{probe}",
            participant_id=f"probe-{probe}",
            is_viewer=True,
            grant=VIEWER_GRANT,
            edge_id="ED_bench",
            reply_to=inbox,
            req=probe,
        )
        await room_log.append(event, f"probe-{probe}")
        deadline = time.perf_counter() + ANSWER_LIMIT_S
        while time.perf_counter() < deadline:
            try:
                msg = await sub.next_msg(timeout=deadline - time.perf_counter())
            except nats.errors.TimeoutError:
                break
            if isinstance(decode(msg.data), JoinAccepted):
                return
        raise TimeoutError(f"no answer to a join into {room_id}")
    finally:
        await sub.unsubscribe()
