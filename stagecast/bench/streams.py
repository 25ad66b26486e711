"""Streams and RPC: what the layer above data messages costs.

`stagecast bench streams --mib 4 --rounds 5 --calls 200` starts a private nats-server, a
statekeeper and one edge as processes (loopback only, data byte budgets out of reach; the
per-socket frame rate still applies), joins two SDK clients and, alternating in each of
`--rounds` rounds:

- sends `--mib` MiB as one text stream (`send_text`) and waits until the reader has it all;
- sends the same bytes as plain 14 KiB `publish_data` messages, one after another (sent
  again after a pause on `RATE_LIMITED`, as a stream's writer does), and waits until the
  receiver has them all (the data path the streams ride on: the baseline);
- makes `--calls` RPCs one after another and times each round trip.

Each phase starts after 2.5 s of quiet (the socket's frame-rate burst refilled); the stream
and raw phases alternate which goes first.

Figures (medians over the rounds): `stream_mib_per_s`, `raw_data_mib_per_s`,
`stream_vs_raw_ratio` (stream / raw throughput), `rpc_round_trip_ms` (median of every call)
and `rpc_round_trip_p95_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from access.tokens import generate_token
from schemas.streams import CHUNK_BYTES
from stagecast.bench import Result
from stagecast.bench.storm import free_port_block
from stagecast.client import (
    ConnectOptions,
    DataMessage,
    LocalParticipant,
    RpcInvocationData,
    TextStreamReader,
    join,
)
from stagecast.errors import RateLimited
from stagecast.up import Stack, UpConfig

API_KEY = "streams"
ROOM = "streams"
UNLIMITED = str(10**12)
NO_BUDGET = (
    "--data-bytes-per-s", UNLIMITED, "--data-burst-bytes", UNLIMITED,
    "--room-data-bytes-per-s", UNLIMITED, "--room-data-burst-bytes", UNLIMITED,
)  # fmt: skip
WAIT = 120.0
REFILL = 2.5
"""Seconds of quiet before each phase: the socket's frame-rate burst (100 frames) refills."""
console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=float, default=4.0, help="MiB per transfer (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--calls", type=int, default=200, help="RPCs per round (default 200)")


async def run(args: argparse.Namespace) -> list[Result]:
    if args.mib <= 0 or args.mib > 64 or args.rounds < 1 or not 1 <= args.calls <= 10_000:
        raise SystemExit("need 0 < --mib <= 64, --rounds >= 1, 1 <= --calls <= 10000")
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="stagecast-streams-") as tmp:
        config = UpConfig(
            port=free_port_block(1), data_dir=Path(tmp), edges=1, forwarders=0,
            api_key=API_KEY, api_secret=secret, dev=False, edge_args=NO_BUDGET,
        )  # fmt: skip
        stack = Stack(config)
        try:
            console.print("starting nats-server, a statekeeper and an edge")
            await asyncio.wait_for(stack.start(log=lambda line: None), 120.0)
            return await _measure(args, stack.edge_urls[0], secret)
        finally:
            await stack.stop()


async def _measure(args: argparse.Namespace, url: str, secret: str) -> list[Result]:
    options = ConnectOptions(request_timeout=30.0)
    sender = await join(url, generate_token(API_KEY, secret, ROOM, "sender"), options=options)
    receiver = await join(url, generate_token(API_KEY, secret, ROOM, "receiver"), options=options)
    try:
        for _ in range(200):
            if "receiver" in sender.remote_participants:
                break
            await asyncio.sleep(0.05)
        size = int(args.mib * 1024 * 1024)
        text = ("x" * 1023 + "\n") * (size // 1024)
        done: asyncio.Queue[int] = asyncio.Queue()

        async def on_text(reader: TextStreamReader, sender_id: str) -> None:
            await done.put(len(await reader.read_all()))

        receiver.register_text_stream_handler("bench", on_text)
        raw_bytes = 0
        raw_done = asyncio.Event()
        raw_goal = 0

        def on_data(message: DataMessage) -> None:
            nonlocal raw_bytes
            raw_bytes += len(message.payload)
            if raw_bytes >= raw_goal:
                raw_done.set()

        receiver.on("data-received", on_data)
        receiver.local_participant.register_rpc_method("echo", _echo)
        stream_rates, raw_rates, trips = [], [], []
        piece = text.encode()[:CHUNK_BYTES]
        pieces = len(text) // CHUNK_BYTES

        async def stream_once() -> None:
            started = time.monotonic()
            await sender.local_participant.send_text(text, topic="bench")
            assert await asyncio.wait_for(done.get(), WAIT) == len(text)
            stream_rates.append(args.mib / (time.monotonic() - started))

        async def raw_once() -> None:
            nonlocal raw_bytes, raw_goal
            raw_bytes, raw_goal = 0, pieces * len(piece)
            raw_done.clear()
            started = time.monotonic()
            for _ in range(pieces):
                await _publish_paced(sender.local_participant, piece)
            await asyncio.wait_for(raw_done.wait(), WAIT)
            raw_rates.append(raw_goal / 1024 / 1024 / (time.monotonic() - started))

        for n in range(args.rounds):
            # A and B alternate which goes first; each starts with a full frame-rate burst.
            for phase in (stream_once, raw_once) if n % 2 == 0 else (raw_once, stream_once):
                await asyncio.sleep(REFILL)
                await phase()
            await asyncio.sleep(REFILL)
            for _ in range(args.calls):
                started = time.monotonic()
                await sender.local_participant.perform_rpc(
                    destination_id="receiver", method="echo", payload="ping"
                )
                trips.append((time.monotonic() - started) * 1000)
            console.print(
                f"round {n + 1}: stream {stream_rates[-1]:.2f} MiB/s, raw {raw_rates[-1]:.2f} "
                f"MiB/s, rpc median {statistics.median(trips[-args.calls :]):.2f} ms"
            )
        stream, raw = statistics.median(stream_rates), statistics.median(raw_rates)
        trips.sort()
        note = f"{args.mib} MiB, median of {args.rounds} rounds"
        return [
            Result("stream_mib_per_s", stream, "MiB/s", f"send_text to read_all, {note}"),
            Result("raw_data_mib_per_s", raw, "MiB/s", f"14 KiB publish_data, {note}"),
            Result("stream_vs_raw_ratio", stream / raw, "x", "stream / raw throughput"),
            Result("rpc_round_trip_ms", statistics.median(trips), "ms", f"{len(trips)} calls"),
            Result("rpc_round_trip_p95_ms", trips[int(len(trips) * 0.95) - 1], "ms", "p95"),
        ]
    finally:
        await sender.leave()
        await receiver.leave()


async def _publish_paced(local: LocalParticipant, payload: bytes) -> None:
    """`publish_data`, sent again after a pause while the edge answers RATE_LIMITED (its
    per-socket frame rate): the same pacing a stream's writer does."""
    pause = 0.05
    while True:
        try:
            await local.publish_data(payload, topic="raw")
            return
        except RateLimited:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


def _echo(data: RpcInvocationData) -> str:
    return data.payload
