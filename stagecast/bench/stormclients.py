"""The storm's simulated clients alone: their own CPU per join and per counts frame.

`stagecast bench stormclients --clients 5000` runs one `stagecast.bench.simclients.Fleet`
against a canned WebSocket server in another process (it answers the upgrade, then every
join with one `joined` frame, then sends `--rounds` rounds of one `counts` frame to every
socket, the same bytes to all, as an edge does), on uvloop as the storm's client processes
(in a thread of this process while the suite's own loop waits). Figures, medians of
`--runs`: this process's CPU (user + system, the kernel's loopback work on its side
included) over the joins / clients joined, and over the counts rounds, less its idle
rate, / counts frames read. No edge, statekeeper or NATS: what is measured is the
simulator, which `stagecast bench storm` reports beside the services
(`client_cpu_us_per_join`, `client_cpu_us_per_frame`) under their load.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import cast

import msgpack
import uvloop

from stagecast.bench import Result, median
from stagecast.bench.simclients import Fleet, Wave
from stagecast.bench.stormhost import raise_nofile

_ROUND_GAP_S = 0.1
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_WAIT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=2000.0, help="connects/s")
    parser.add_argument("--rounds", type=int, default=20, help="counts frames per client")
    parser.add_argument("--runs", type=int, default=3)


def _frame(body: dict[str, object]) -> bytes:
    """A server's binary frame (unmasked) of `body` in msgpack (built here, not by the
    client's own code under test)."""
    payload: bytes = msgpack.packb(body)
    n = len(payload)
    head = bytes((0x82, n)) if n < 126 else bytes((0x82, 126)) + n.to_bytes(2, "big")
    return head + payload


class _Canned(asyncio.Protocol):
    """One server socket: a 101 to the upgrade, a `joined` to the first frame, a close
    echoed."""

    def __init__(self, sockets: list[_Canned]) -> None:
        self.transport: asyncio.Transport | None = None
        self.head, self.opened, self.joined = b"", False, False
        sockets.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.opened:
            self.head += data
            if b"\r\n\r\n" in self.head:
                key = self.head.split(b"Sec-WebSocket-Key: ", 1)[1].split(b"\r\n", 1)[0]
                accept = (
                    b"Sec-WebSocket-Accept: "
                    + base64.b64encode(hashlib.sha1(key + _GUID).digest())
                    + b"\r\n\r\n"
                )
                self.transport.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n" + accept
                )
                self.opened = True
        elif not self.joined:
            self.joined = True
            body = {"t": "joined", "id": 1, "speakers": [], "counts": {"total": 1}}
            self.transport.write(_frame(body))
        elif data[0] & 0x0F == 0x8:
            self.transport.write(b"\x88\x02\x03\xe8")  # close 1000
            self.transport.close()


async def _serve(conn: Connection) -> None:
    sockets: list[_Canned] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Canned(sockets), "127.0.0.1", 0, backlog=4096)
    conn.send(server.sockets[0].getsockname()[1])
    seq = 0
    while True:
        while not conn.poll():
            await asyncio.sleep(0.01)
        command = conn.recv()
        if command[0] == "exit":
            server.close()
            return
        if command[0] == "reset":
            for s in sockets:
                if s.transport is not None:
                    s.transport.abort()
            sockets.clear()
            continue
        for _ in range(command[1]):  # ("counts", rounds)
            seq += 1
            body = {"t": "counts", "seq": seq, "counts": {"total": 1000 + seq}}
            frame = _frame(body)
            for s in sockets:
                if s.transport is not None and s.joined and not s.transport.is_closing():
                    s.transport.write(frame)
            await asyncio.sleep(_ROUND_GAP_S)
        conn.send("sent")


def _server_main(conn: Connection) -> None:
    uvloop.run(_serve(conn))


async def _one_run(port: int, conn: Connection, args: argparse.Namespace) -> tuple[float, ...]:
    """(CPU µs per join, per counts frame, clients joined, frames read) of one run."""
    loop = asyncio.get_running_loop()
    fleet = Fleet(0, 1, [f"ws://127.0.0.1:{port}/rtc"], ["127.0.0.1"])
    wave = Wave("clients", ("token",), args.clients, args.rate, loop.time() + 0.1, True)
    cpu = time.process_time()
    joined = (await fleet.run_wave(wave, 30.0))["joined"]
    per_join = (time.process_time() - cpu) / max(joined, 1) * 1e6
    await asyncio.sleep(0.5)
    cpu, at = time.process_time(), time.monotonic()
    await asyncio.sleep(1.0)
    idle = (time.process_time() - cpu) / (time.monotonic() - at)
    cpu, at, before = time.process_time(), time.monotonic(), fleet.count_frames
    conn.send(("counts", args.rounds))
    deadline = at + _WAIT_S + args.rounds * _ROUND_GAP_S
    while fleet.count_frames - before < joined * args.rounds and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    frames = fleet.count_frames - before
    used = time.process_time() - cpu - idle * (time.monotonic() - at)
    while time.monotonic() < deadline and not conn.poll():
        await asyncio.sleep(0.02)
    if conn.poll():
        conn.recv()  # "sent"
    await fleet.close(5.0)
    conn.send(("reset",))
    return per_join, used / max(frames, 1) * 1e6, joined, frames


async def run(args: argparse.Namespace) -> list[Result]:
    if args.clients < 1 or args.rate <= 0 or args.rounds < 1 or args.runs < 1:
        raise SystemExit("need --clients, --rate, --rounds and --runs >= 1")
    raise_nofile(args.clients)
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    server = ctx.Process(target=_server_main, args=(there,), name="stormclients-server")
    server.start()
    there.close()
    try:
        if not here.poll(30.0):
            raise SystemExit("the canned server did not start")
        port = here.recv()
        runs = await asyncio.to_thread(_measure, port, here, args)
    finally:
        here.send(("exit",))
        server.join(5.0)
        if server.is_alive():
            server.kill()
    joins, frames = [r[0] for r in runs], [r[1] for r in runs]
    spread = ", ".join(f"{j:.0f}/{f:.2f}" for j, f in zip(joins, frames, strict=True))
    joined = min(int(r[2]) for r in runs)
    read = min(int(r[3]) for r in runs)
    return [
        Result("sim_cpu_us_per_join", median(joins), "us",
               f"median of {args.runs} (per join/per frame: {spread}); {joined} joined at least"),
        Result("sim_cpu_us_per_frame", median(frames), "us",
               f"counts frames read, beyond idle; {read} at least"),
    ]  # fmt: skip


def _measure(port: int, conn: Connection, args: argparse.Namespace) -> list[tuple[float, ...]]:
    """Every run, each in its own uvloop loop (in this thread: the suite's loop waits)."""
    return [uvloop.run(_one_run(port, conn, args)) for _ in range(args.runs)]


__all__ = ["add_arguments", "run"]
