"""Webhook delivery: how fast `stagecast webhooks` drains a burst, and its latency.

Starts a private nats-server, an HTTP endpoint on 127.0.0.1 (in this process, answering
204 at once) and `stagecast webhooks` as a subprocess. Two phases:

- burst: `--events` participant_joined events over `--rooms` rooms appended at once; the
  figure is events delivered per second (first append to last POST), and the sender's CPU
  time per delivered event.
- paced: `--rate` events per second for `--seconds`, spread over the rooms; the figures
  are the p50 and p99 from an event's append (its confirmation) to its POST's arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import nats
import psutil
from rich.console import Console

from processes.children import CLI
from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from schemas.events import ParticipantJoinedEvent
from schemas.models import ParticipantInfo
from stagecast.bench import Result, percentile

console = Console(stderr=True)
SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-of-32-bytes").decode()
BATCH = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options."""
    parser.add_argument("--events", type=int, default=20_000, help="events in the burst")
    parser.add_argument("--rooms", type=int, default=100, help="rooms they spread over")
    parser.add_argument("--rate", type=int, default=500, help="paced phase: events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced phase: duration")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (s)")


class Endpoint:
    """A minimal HTTP/1.1 endpoint: records when each event id arrived, answers 204."""

    def __init__(self) -> None:
        self.arrived: dict[bytes, float] = {}
        self.count = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, event_id = 0, b""
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        event_id = value.strip()
                await reader.readexactly(length)
                self.arrived.setdefault(event_id, time.perf_counter())
                self.count += 1
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def events(
    start: int, count: int, rooms: int
) -> list[tuple[str, str, ParticipantJoinedEvent, str]]:
    out = []
    for n in range(start, start + count):
        room = f"room-{n % rooms}"
        info = ParticipantInfo(sid=f"PA_{n}", id=f"user-{n}")
        message = ParticipantJoinedEvent(
            id=f"{n}.pj", at=0, room_id=room, room_sid=f"RM_{room}", participant=info
        )
        out.append((room, "participant_joined", message, message.id))
    return out


async def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run(args: argparse.Namespace) -> list[Result]:
    endpoint = Endpoint()
    url = await endpoint.start()
    with tempfile.TemporaryDirectory(prefix="stagecast-bench-webhooks-") as tmp:
        server = NatsServer(Path(tmp) / "nats")
        await server.start()
        nc = await nats.connect(server.url)
        log = RoomLog(nc.jetstream())
        await log.ensure()
        env = dict(
            os.environ,
            STAGECAST_NATS_URL=server.url,
            STAGECAST_API_KEY="bench",
            STAGECAST_API_SECRET="bench-secret-bench-secret-bench!",
            STAGECAST_WEBHOOK_URL=url,
            STAGECAST_WEBHOOK_SECRET=SECRET,
        )
        sender = await asyncio.to_thread(
            subprocess.Popen,
            [*CLI, "webhooks"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert sender.stdout is not None
            ready = await asyncio.to_thread(sender.stdout.readline)
            if b"ready" not in ready:
                raise RuntimeError(f"stagecast webhooks did not start: {ready!r}")
            proc = psutil.Process(sender.pid)
            # burst
            cpu0 = sum(proc.cpu_times()[:2])
            started = time.perf_counter()
            for first in range(0, args.events, BATCH):
                await log.publish_events(events(first, min(BATCH, args.events - first), args.rooms))
            await wait_for(lambda: len(endpoint.arrived) >= args.events, args.timeout, "burst")
            elapsed = max(endpoint.arrived.values()) - started
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            console.print(f"burst: {args.events} events in {elapsed:.2f} s")
            # paced
            sent: dict[bytes, float] = {}
            total = int(args.rate * args.seconds)
            begin = time.perf_counter()
            for n in range(total):
                due = begin + n / args.rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                batch = events(args.events + n, 1, args.rooms)
                await log.publish_events(batch)
                sent[batch[0][3].encode()] = time.perf_counter()
            await wait_for(lambda: all(k in endpoint.arrived for k in sent), args.timeout, "paced")
            latencies = [(endpoint.arrived[k] - t) * 1000 for k, t in sent.items()]
        finally:
            sender.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(sender.wait, 10)
            if sender.poll() is None:
                sender.kill()
            await nc.close()
            await server.stop()
            assert endpoint.server is not None
            endpoint.server.close()
    note = f"{args.rooms} rooms, one endpoint"
    return [
        Result("webhooks_burst_events_per_s", args.events / elapsed, "events/s", note),
        Result("webhooks_sender_cpu_per_event", cpu / args.events * 1e6, "us", "user+system"),
        Result("webhooks_latency_p50", percentile(latencies, 50), "ms", f"{args.rate}/s paced"),
        Result("webhooks_latency_p99", percentile(latencies, 99), "ms", f"{args.rate}/s paced"),
    ]
