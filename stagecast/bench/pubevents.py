"""Public events out of the statekeeper: one ack per event against JetStream fast batches.

`stagecast bench pubevents --events 50000 --flush 250 --runs 3` starts a private nats-server
and, in this process, publishes `--events` `participant_joined` public events (one per join,
as the statekeeper makes them) in flushes of `--flush` events (a flush every 100 ms at 2,500
joins/s), each run alternating which of the two ways `RoomLog` has goes first:
`publish_events` (pipelined, one ack per event: the statekeeper until 2026-12-07) and
`publish_event_batch` (one JetStream fast batch per flush: a few acks each). Every event has
a new id, so nothing is deduplicated.

Figures (medians over the runs): this process's CPU per event for each way (user + system:
what the statekeeper pays per join for its public event, less sensitive to other load than
a rate), the nats-server's CPU per event for each, messages in per event, and
`pubevents_cpu_ratio` (batched / acked, this process).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import psutil
from nats.aio.client import Client as NATS

from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from schemas.events import ParticipantJoinedEvent
from schemas.models import ParticipantInfo
from stagecast.bench import Result, median
from stagecast.bench.harness import private_nats

Event = tuple[str, str, ParticipantJoinedEvent, str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--flush", type=int, default=250, help="events per flush")
    parser.add_argument("--runs", type=int, default=3)


def _events(prefix: str, count: int) -> list[Event]:
    out: list[Event] = []
    for n in range(count):
        event_id = f"{prefix}{n}.pj"
        info = ParticipantInfo(sid=f"PA_{prefix}{n}", id=f"viewer-{n}", is_viewer=True)
        message = ParticipantJoinedEvent(
            id=event_id, at=n, room_id="bench", room_sid="RM_1", participant=info
        )
        out.append(("bench", "participant_joined", message, event_id))
    return out


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _measure(
    send: Callable[[list[Event]], Awaitable[object]],
    events: list[Event],
    flush: int,
    nc: NATS,
    server: psutil.Process,
) -> tuple[float, float, float]:
    """(this process's CPU µs, the server's CPU µs, messages in) per event."""
    me = psutil.Process()
    in_before, mine, theirs = nc.stats["in_msgs"], _cpu_s(me), _cpu_s(server)
    for start in range(0, len(events), flush):
        await send(events[start : start + flush])
    count = len(events)
    return (
        (_cpu_s(me) - mine) / count * 1e6,
        (_cpu_s(server) - theirs) / count * 1e6,
        (nc.stats["in_msgs"] - in_before) / count,
    )


def _server_process(server: NatsServer) -> psutil.Process:
    if server.pid is None:
        raise RuntimeError("nats-server is not running")
    return psutil.Process(server.pid)


async def run(args: argparse.Namespace) -> list[Result]:
    figures: dict[str, list[float]] = {}
    async with private_nats() as (server, nc, _workdir):
        room_log = RoomLog(nc.jetstream())
        await room_log.ensure()
        process = _server_process(server)
        ways: dict[str, Callable[[list[Event]], Awaitable[object]]] = {
            "acked": room_log.publish_events,
            "batched": room_log.publish_event_batch,
        }
        await room_log.publish_event_batch(_events("warm", 2 * args.flush))  # warm both paths
        await room_log.publish_events(_events("warm2", 2 * args.flush))
        for run_no in range(args.runs):
            order = list(ways) if run_no % 2 == 0 else list(reversed(ways))
            for way in order:
                started = time.perf_counter()
                mine, theirs, messages = await _measure(
                    ways[way], _events(f"r{run_no}{way}", args.events), args.flush, nc, process
                )
                figures.setdefault(f"{way}_cpu", []).append(mine)
                figures.setdefault(f"{way}_server", []).append(theirs)
                figures.setdefault(f"{way}_in", []).append(messages)
                figures.setdefault(f"{way}_s", []).append(time.perf_counter() - started)
        if not room_log.fast_batches:
            raise RuntimeError("the events stream took no fast batches: nothing to compare")
    note = f"{args.events} events in flushes of {args.flush}, median of {args.runs}"
    results = []
    for way, what in (("acked", "one ack per event"), ("batched", "fast batches")):
        results += [
            Result(
                f"pubevents_{way}_cpu_us_per_event",
                median(figures[f"{way}_cpu"]),
                "us",
                f"{what}; {note}",
            ),
            Result(
                f"pubevents_{way}_server_cpu_us_per_event",
                median(figures[f"{way}_server"]),
                "us",
                "nats-server",
            ),
            Result(f"pubevents_{way}_msgs_in_per_event", median(figures[f"{way}_in"]), "x"),
            Result(f"pubevents_{way}_s", median(figures[f"{way}_s"]), "s"),
        ]
    results.append(
        Result(
            "pubevents_cpu_ratio",
            median(figures["batched_cpu"]) / median(figures["acked_cpu"]),
            "x",
            "batched / acked, this process's CPU per event",
        )
    )
    return results
