"""Statekeeper recovery: restart to serving with a large room in the log.

Fills a room with N viewers (and 5 speakers), lets the statekeeper fold and snapshot
them, appends a tail of further events, then kills the statekeeper with SIGKILL and
starts a new one. The figure is the time from starting the new process to its first
healthy answer at the log's head (snapshot loaded and the tail replayed). The baseline is
a cold start of the same statekeeper on an empty log, in the same run. `recovery_cpu_s` is
the new process's CPU (user + system) until that answer: on a shared machine it moves much
less with unrelated load than the time does.
"""

from __future__ import annotations

import argparse
import signal
import time

import psutil

from roomlog.log import RoomLog
from stagecast.bench import Result, median
from stagecast.bench.harness import private_nats, start_statekeeper, stop_child, wait_applied
from stagecast.bench.workload import storm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--viewers", type=int, default=100_000)
    parser.add_argument("--tail", type=int, default=5_000, help="events after the snapshot")
    parser.add_argument("--runs", type=int, default=3)


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def run(args: argparse.Namespace) -> list[Result]:
    async with private_nats() as (server, nc, workdir):
        room_log = RoomLog(nc.jetstream())
        await room_log.ensure()
        database_url = f"sqlite+aiosqlite:///{workdir}/sk.db"
        cold: list[float] = []
        started = time.perf_counter()
        proc = start_statekeeper(server.url, database_url, workdir / "sk.log")
        await wait_applied(nc, 0)
        cold.append(time.perf_counter() - started)
        cold_cpu = _cpu_s(proc.pid)

        events = list(storm("big-room", viewers=args.viewers, churn=0.0))
        await room_log.append_many((e, f"e{i}") for i, e in enumerate(events))
        head = len(events)
        await wait_applied(nc, head)
        await stop_child(proc)  # a clean stop writes the snapshot
        tail = list(storm("big-room-tail", viewers=args.tail, churn=0.1))
        await room_log.append_many((e, f"t{i}") for i, e in enumerate(tail))
        head += len(tail)

        recoveries: list[float] = []
        cpu: list[float] = []
        for _ in range(args.runs):
            started = time.perf_counter()
            proc = start_statekeeper(server.url, database_url, workdir / "sk.log")
            await wait_applied(nc, head)
            recoveries.append(time.perf_counter() - started)
            cpu.append(_cpu_s(proc.pid))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        return [
            Result(
                "recovery_s",
                median(recoveries),
                "s",
                f"{args.viewers} viewers + {len(tail)}-event tail, median of {args.runs}",
            ),
            Result("cold_start_s", median(cold), "s", "baseline: empty log"),
            Result("recovery_cpu_s", median(cpu), "s", "the recovering process's CPU"),
            Result("cold_start_cpu_s", cold_cpu, "s", "baseline: CPU of the cold start"),
        ]
