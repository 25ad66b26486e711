"""Room-log ingest: append through JetStream until the statekeeper has folded it all.

A statekeeper process folds a join storm (5 speakers, N viewers, 10% churn) that this
process appends with pipelined JetStream publishes. The figure is events per second from
the first append to the last event's outcome (its join reply) arriving back here; the
baseline is the append rate alone (same events, no statekeeper), measured in this run.
`ingest_statekeeper_cpu_us_per_event` is the statekeeper process's CPU (user + system, all
threads) over the same window, per event: what folding and carrying out an event costs it,
which on a shared machine moves much less with unrelated load than the rate does.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import msgspec
import psutil

from roomlog.log import RoomLog
from schemas.log import JoinRequested
from stagecast.bench import Result, median
from stagecast.bench.harness import private_nats, start_statekeeper, stop_child, wait_applied
from stagecast.bench.workload import storm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _one_run(events: int, run: int) -> tuple[float, float, float]:
    async with private_nats() as (server, nc, workdir):
        room_log = RoomLog(nc.jetstream())
        await room_log.ensure()
        # Baseline: appends alone, into a room nobody folds yet.
        base = [e for e in storm(f"baseline-{run}", viewers=events)][:events]
        started = time.perf_counter()
        await room_log.append_many((e, f"b{i}") for i, e in enumerate(base))
        append_rate = len(base) / (time.perf_counter() - started)

        proc = start_statekeeper(
            server.url, f"sqlite+aiosqlite:///{workdir}/sk.db", workdir / "sk.log"
        )
        try:
            await wait_applied(nc, len(base))
            work = [e for e in storm(f"room-{run}", viewers=events)][:events]
            last = work[-1]
            done = asyncio.Event()
            inbox = nc.new_inbox()

            async def on_reply(_msg: object) -> None:
                done.set()

            sub = await nc.subscribe(inbox, cb=on_reply)
            if isinstance(last, JoinRequested):
                work[-1] = msgspec.structs.replace(last, reply_to=inbox)
            else:
                work.append(
                    JoinRequested(
                        room_id=f"room-{run}",
                        at=0,
                        sid="PA_last",
                        participant_id="last",
                        edge_id="ED_bench",
                        reply_to=inbox,
                    )
                )
            keeper = psutil.Process(proc.pid)
            cpu_before = _cpu_s(keeper)
            started = time.perf_counter()
            await room_log.append_many((e, f"w{i}") for i, e in enumerate(work))
            await asyncio.wait_for(done.wait(), 300)
            ingest_rate = len(work) / (time.perf_counter() - started)
            cpu_us = (_cpu_s(keeper) - cpu_before) / len(work) * 1e6
            await sub.unsubscribe()
        finally:
            await stop_child(proc)
        return ingest_rate, append_rate, cpu_us


async def run(args: argparse.Namespace) -> list[Result]:
    ingest, append, cpu = [], [], []
    for run_no in range(args.runs):
        i, a, c = await _one_run(args.events, run_no)
        ingest.append(i)
        append.append(a)
        cpu.append(c)
    return [
        Result(
            "ingest_events_per_s",
            median(ingest),
            "1/s",
            f"{args.events} events, median of {args.runs}",
        ),
        Result(
            "append_only_events_per_s", median(append), "1/s", "baseline: JetStream appends alone"
        ),
        Result("ingest_vs_append_ratio", median(ingest) / median(append), "x"),
        Result(
            "ingest_statekeeper_cpu_us_per_event",
            median(cpu),
            "us",
            "statekeeper process CPU over the same window",
        ),
    ]
