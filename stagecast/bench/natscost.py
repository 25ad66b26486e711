"""The statekeeper's NATS cost per join: its public event out, its log delivery in.

Public events: `stagecast bench natscost --events 50000 --flush 250 --runs 3` starts a
private nats-server and, in this process, publishes `--events` `participant_joined` public
events (one per join, as the statekeeper makes them) in flushes of `--flush` events (a flush
every 100 ms at 2,500 joins/s), each run alternating which of the two ways `RoomLog` has
goes first: `publish_events` (pipelined, one ack per event: the statekeeper until
2026-12-07) and `publish_event_batch` (one JetStream fast batch per flush: a few acks each).
Every event has a new id, so nothing is deduplicated.

Figures (medians over the runs): this process's CPU per event for each way (user + system:
what the statekeeper pays per join for its public event, less sensitive to other load than
a rate), the nats-server's CPU per event for each, messages in per event, and
`pubevents_cpu_ratio` (batched / acked, this process).

Log deliveries: the same number of room-log deliveries as the server writes them to the
statekeeper (``HMSG`` with the ``$JS.ACK`` reply and the ``Nats-Msg-Id`` header, in 64 KiB
reads), parsed by nats-py's parser and handed to a raw handler as
`roomlog.jetstream.FastDelivery` does: `parse_us_per_delivery` (this process's CPU, median of
the runs).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import psutil
from nats.aio.client import Client as NATS
from nats.protocol.parser import Parser

from processes.natsserver import NatsServer
from roomlog.jetstream import FastDelivery
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
    """(this process's CPU µs, the server's CPU µs, messages in) per event.

    This process's CPU is read with nanosecond resolution (`time.process_time`); the
    server's through psutil, in clock ticks (10 ms: a small run may read 0)."""
    in_before, mine, theirs = nc.stats["in_msgs"], time.process_time(), _cpu_s(server)
    for start in range(0, len(events), flush):
        await send(events[start : start + flush])
    count = len(events)
    return (
        (time.process_time() - mine) / count * 1e6,
        (_cpu_s(server) - theirs) / count * 1e6,
        (nc.stats["in_msgs"] - in_before) / count,
    )


class _Reader:
    """What nats-py's parser calls on a client, for a parser outside any connection."""

    def __init__(self) -> None:
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        self.delivered = 0
        self._ps = Parser(self)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.delivered += 1


def _deliveries(count: int) -> list[bytes]:
    """`count` room-log deliveries as nats-server writes them, cut in 64 KiB reads."""
    frames = []
    for n in range(1, count + 1):
        headers = b"NATS/1.0\r\nNats-Msg-Id: PA_v%d:join\r\n\r\n" % n
        payload = b"\x8a" + b"j" * 200  # about a viewer's JoinRequested
        reply = b"$JS.ACK.STAGECAST_LOG.c1.1.%d.%d.1765100000000000000.%d" % (n, n, count - n)
        frames.append(
            b"HMSG stagecast.logp.0.bench 1 %s %d %d\r\n%s%s\r\n"
            % (reply, len(headers), len(headers) + len(payload), headers, payload)
        )
    wire = b"".join(frames)
    return [wire[i : i + 65536] for i in range(0, len(wire), 65536)]


async def _parse_us(reads: list[bytes], count: int) -> float:
    """This process's CPU per delivery to parse `reads` (routed to a raw handler)."""
    reader = _Reader()
    routed: list[bytes] = []
    routes = {1: lambda s, r, d, h: routed.append(d)}
    FastDelivery._wrap(reader, reader._process_msg, routes)  # type: ignore[arg-type]
    parse = reader._ps.parse
    me = psutil.Process()
    before = _cpu_s(me)
    for data in reads:
        await parse(data)
    spent = _cpu_s(me) - before
    if reader.delivered + len(routed) != count:
        raise RuntimeError(f"parsed {reader.delivered + len(routed)} of {count} deliveries")
    return spent / count * 1e6


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
    reads = _deliveries(args.events)
    for _ in range(args.runs):
        figures.setdefault("parse", []).append(await _parse_us(reads, args.events))
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
    results.append(
        Result("parse_us_per_delivery", median(figures["parse"]), "us", "nats-py's parser")
    )
    return results
