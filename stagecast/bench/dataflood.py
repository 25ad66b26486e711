"""Data flood: one sender sends the largest data messages to a room of viewers.

`stagecast bench dataflood --viewers 200 --seconds 10` starts a private nats-server, a
statekeeper and one edge as processes (loopback only), joins `--viewers` viewers (raw
WebSockets in this process, one shared viewer token) and one speaker, and has the speaker
send `--payload`-byte data messages (default 15 KiB, the largest) `--rate` times a second
(default 50, the per-socket frame limit) for `--seconds`: at most rate x seconds messages,
then at most `--drain` seconds for the viewers to read what was sent. It runs twice, each
time on a fresh stack: `nobudget` (the edge's data byte budgets set out of reach: the edge
before them) and `budget` (the edge's default budgets). Figures, per mode:

- <mode>_acked / <mode>_rate_limited: data messages the edge took / refused (RATE_LIMITED).
- <mode>_edge_data_mb: data-frame bytes the edge queued to sockets
  (`stagecast_edge_data_bytes_out_total`), <mode>_viewer_mb: WebSocket payload bytes the
  viewers read, <mode>_edge_data_mb_per_s: the former per second of flood.
- <mode>_edge_cpu_s: the edge process's CPU seconds from the first message to the drain.
- <mode>_viewers_closed: viewers the edge closed meanwhile (slow consumers).

and `flood_cost_ratio`: nobudget_edge_data_mb / budget_edge_data_mb.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from access.tokens import generate_token
from edge.metrics import sample_value
from schemas.client import Ack, Error, Join, JoinAccepted, PublishData
from schemas.codec import decode, encode
from schemas.models import DATA_BYTES, Grant
from stagecast.bench import Result
from stagecast.bench.simclients import peek_tag
from stagecast.bench.storm import free_port_block
from stagecast.up import Stack, UpConfig

API_KEY = "dataflood"
ROOM = "dataflood"
UNLIMITED = str(10**12)
"""A byte budget no flood on one machine reaches: the edge as it was before budgets."""
NO_BUDGET = (
    "--data-bytes-per-s", UNLIMITED, "--data-burst-bytes", UNLIMITED,
    "--room-data-bytes-per-s", UNLIMITED, "--room-data-burst-bytes", UNLIMITED,
)  # fmt: skip
_JOINS_AT_ONCE = 50
console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="s of flood (default 10)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s (default 50)")
    parser.add_argument("--payload", type=int, default=DATA_BYTES, help="bytes (15 KiB)")
    parser.add_argument("--drain", type=float, default=10.0, help="s for viewers to catch up")
    parser.add_argument(
        "--mode", choices=("both", "nobudget", "budget"), default="both", help="default both"
    )


@dataclasses.dataclass
class Viewer:
    """One viewer socket, counting what it reads."""

    ws: ClientConnection
    bytes_read: int = 0
    data_frames: int = 0
    closed: bool = False

    async def read(self) -> None:
        try:
            async for frame in self.ws:
                data = frame if isinstance(frame, bytes) else frame.encode()
                self.bytes_read += len(data)
                if peek_tag(data) == b"data":
                    self.data_frames += 1
        except ConnectionClosed:
            pass
        self.closed = True


async def join(url: str, token: str) -> ClientConnection:
    ws = await connect(url, max_size=4 * 1024 * 1024, open_timeout=30)
    await ws.send(encode(Join(id=1, token=token)))
    while True:
        frame = await asyncio.wait_for(ws.recv(decode=False), 30)
        reply = decode(frame)
        if isinstance(reply, JoinAccepted):
            return ws
        if isinstance(reply, Error):
            raise RuntimeError(f"join refused: {reply.code} {reply.message}")


@dataclasses.dataclass
class Sender:
    """The flooding speaker: sends on a schedule, counts the edge's answers."""

    ws: ClientConnection
    acked: int = 0
    rate_limited: int = 0
    other: int = 0

    async def read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                if not isinstance(frame, bytes):
                    continue
                tag = peek_tag(frame)
                if tag == b"ack":
                    self.acked += isinstance(decode(frame), Ack)
                elif tag == b"error":
                    error = decode(frame)
                    if isinstance(error, Error) and error.code == "RATE_LIMITED":
                        self.rate_limited += 1
                    else:
                        self.other += 1

    async def flood(self, count: int, rate: float, payload: bytes) -> None:
        start = time.monotonic()
        for n in range(count):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.send(encode(PublishData(id=n + 2, payload=payload)))


async def edge_metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        found = sample_value((await http.get("/metrics")).text, name)
    return found or 0.0


async def settle(viewers: list[Viewer], limit_s: float) -> None:
    """Wait until the viewers read nothing more for 0.5 s (at most `limit_s`)."""
    deadline = time.monotonic() + limit_s
    last = -1
    while time.monotonic() < deadline:
        total = sum(v.bytes_read for v in viewers)
        if total == last:
            return
        last = total
        await asyncio.sleep(0.5)


async def one_flood(args: argparse.Namespace, mode: str, workdir: Path) -> list[Result]:
    secret = secrets.token_urlsafe(32)
    config = UpConfig(
        port=free_port_block(1), data_dir=workdir / mode, edges=1, forwarders=0,
        api_key=API_KEY, api_secret=secret, dev=False,
        edge_args=NO_BUDGET if mode == "nobudget" else (),
    )  # fmt: skip
    stack = Stack(config)
    viewers: list[Viewer] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        console.print(f"{mode}: starting nats-server, a statekeeper and an edge")
        await asyncio.wait_for(stack.start(log=lambda line: None), 120.0)
        http_url = stack.edge_urls[0]
        url = http_url.replace("http://", "ws://") + "/rtc"
        edge = psutil.Process(stack.children[1].pid)  # [statekeeper, edge]
        audience = generate_token(API_KEY, secret, room_id=ROOM, is_viewer=True)
        gate = asyncio.Semaphore(_JOINS_AT_ONCE)

        async def one_viewer() -> Viewer:
            async with gate:
                return Viewer(await join(url, audience))

        viewers = list(await asyncio.gather(*(one_viewer() for _ in range(args.viewers))))
        tasks += [asyncio.create_task(v.read()) for v in viewers]
        speaker = generate_token(
            API_KEY, secret, room_id=ROOM, participant_id="flood", grant=Grant()
        )
        sender = Sender(await join(url, speaker))
        tasks.append(asyncio.create_task(sender.read()))
        count = int(args.rate * args.seconds)
        console.print(
            f"{mode}: {args.viewers} viewers joined; {count} messages of {args.payload} B"
        )
        cpu_before = edge.cpu_times()
        started = time.monotonic()
        await sender.flood(count, args.rate, b"x" * args.payload)
        flood_s = time.monotonic() - started
        await settle(viewers, args.drain)
        cpu_after = edge.cpu_times()
        cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        out_mb = await edge_metric(http_url, "stagecast_edge_data_bytes_out_total") / 1e6
        read_mb = sum(v.bytes_read for v in viewers) / 1e6
        closed = sum(v.closed for v in viewers)
        note = f"{args.viewers} viewers, {count} x {args.payload} B in {flood_s:.1f} s"
        return [
            Result(f"{mode}_acked", sender.acked, "messages", f"of {count} sent"),
            Result(f"{mode}_rate_limited", sender.rate_limited, "messages", "RATE_LIMITED"),
            Result(f"{mode}_edge_data_mb", out_mb, "MB", note),
            Result(f"{mode}_edge_data_mb_per_s", out_mb / flood_s, "MB/s", "per second of flood"),
            Result(f"{mode}_viewer_mb", read_mb, "MB", "WebSocket payloads the viewers read"),
            Result(f"{mode}_edge_cpu_s", cpu, "s", "edge process, flood and drain"),
            Result(f"{mode}_viewers_closed", closed, "viewers", "closed by the edge meanwhile"),
        ]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(v.ws.close() for v in viewers), return_exceptions=True)
        console.print(f"{mode}: stopping the stack")
        await stack.stop()


async def run(args: argparse.Namespace) -> list[Result]:
    if args.viewers < 1 or args.seconds <= 0 or args.rate <= 0:
        raise SystemExit("need --viewers >= 1, --seconds > 0, --rate > 0")
    if not 1 <= args.payload <= DATA_BYTES:
        raise SystemExit(f"--payload must be 1..{DATA_BYTES} bytes")
    modes = ("nobudget", "budget") if args.mode == "both" else (args.mode,)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="stagecast-dataflood-") as tmp:
        for mode in modes:
            results += await one_flood(args, mode, Path(tmp))
    by_name = {r.name: r.value for r in results}
    if len(modes) == 2 and by_name["budget_edge_data_mb"] > 0:
        ratio = by_name["nobudget_edge_data_mb"] / by_name["budget_edge_data_mb"]
        results.append(Result("flood_cost_ratio", ratio, "x", "edge data bytes, before / with"))
    return results
