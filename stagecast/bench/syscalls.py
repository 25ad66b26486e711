"""What this machine's kernel charges for the writes Stagecast makes most (loopback).

Two figures of issue 10 and 12 are mostly system calls: `count_us_per_socket_frame` (the
edge's CPU to send one counts frame to one viewer's socket: a small TCP write) and the
forwarder's per-leg cost (one SRTP packet to one subscriber: a UDP datagram). This suite
measures the floor under them, so a figure from a storm or a media run can be read
against what a write costs here at all:

- `tcp_send_us`: one 24-byte `send` on a connected TCP socket, from C, nobody asleep on
  the other end (N sockets, each written once per round); `tcp_send_woken_us`: the same
  with a client process asleep in `epoll_wait` on every socket (each write wakes it, as a
  viewer's counts frame does). On loopback the kernel delivers to the peer within the
  call, so both include the receiving side's TCP work.
- `py_socket_send_us`: the same writes from a Python loop (`socket.send`), and
  `asyncio_write_us` through asyncio's transports (`transport.write`, the default loop,
  as the edge writes): what the interpreter adds to the kernel's part.
- `udp_sendto_us`: one 1,200-byte datagram from each of N sockets to its own peer (a
  forwarder leg today: a socket per subscriber's ICE pair); `udp_send_connected_us` the
  same on connected sockets; `udp_sendmmsg_us` the N datagrams from one socket in one
  `sendmmsg` (what an ICE UDP mux would allow).

The C part (stagecast/bench/syscalls.c) is compiled with the machine's C compiler (the
one `make` installs for the forwarder's fan-out) into a temporary directory. Figures are
the sending thread's CPU time per message, medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from stagecast.bench import Result, median

SOURCE = Path(__file__).with_name("syscalls.c")
FRAME = bytes([0x82, 22]) + bytes(22)
"""A counts-sized WebSocket frame (24 bytes), as in the C part."""


class NoCompiler(RuntimeError):
    """No C compiler on PATH (`cc` or `gcc`): `make .venv/.installed` installs one."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sockets", type=int, default=2000, help="TCP sockets written per round")
    parser.add_argument("--legs", type=int, default=100, help="UDP peers per round (legs)")
    parser.add_argument("--rounds", type=int, default=9)


def compile_floor(directory: Path) -> Path:
    """syscalls.c built into `directory`; the executable's path."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise NoCompiler("no C compiler (cc or gcc) on PATH: run `make .venv/.installed`")
    binary = directory / "syscalls"
    subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(binary), str(SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return binary


def kernel_figures(binary: Path, sockets: int, legs: int, rounds: int) -> dict[str, float]:
    """The C part's `FIGURE name value` lines."""
    done = subprocess.run(
        [str(binary), str(sockets), str(legs), str(rounds)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures: dict[str, float] = {}
    for line in done.stdout.splitlines():
        tag, name, value = line.split()
        if tag == "FIGURE":
            figures[name] = float(value)
    return figures


def _drain(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(BlockingIOError):
            while sock.recv(65536):
                pass


async def python_figures(count: int, rounds: int) -> dict[str, float]:
    """Per-message CPU of a Python `socket.send` loop and of asyncio `transport.write`."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transports.append(transport)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # 4 descriptors per socket written, and the child's
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await loop.create_server(Accepted, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    clients: list[socket.socket] = []
    accepted: list[socket.socket] = []
    try:
        for k in range(count):  # raw sockets to the asyncio server, accepted as they come
            clients.append(socket.create_connection(("127.0.0.1", port)))
            if k % 64 == 63:
                await asyncio.sleep(0)
        for _ in range(count):  # and pairs for the plain socket loop
            client = socket.create_connection(listener.getsockname())
            peer, _address = listener.accept()
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer.setblocking(False)
            clients.append(client)
            accepted.append(peer)
        for client in clients:
            client.setblocking(False)
        deadline = time.monotonic() + 30
        while len(transports) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if len(transports) < count:
            raise RuntimeError(f"asyncio accepted {len(transports)} of {count} connections")
        plain, through_asyncio = [], []
        for _ in range(rounds):
            started = time.thread_time()
            for peer in accepted:
                peer.send(FRAME)
            plain.append((time.thread_time() - started) / count * 1e6)
            started = time.thread_time()
            for transport in transports:
                transport.write(FRAME)
            through_asyncio.append((time.thread_time() - started) / count * 1e6)
            _drain(clients)
        return {"py_socket_send_us": median(plain), "asyncio_write_us": median(through_asyncio)}
    finally:
        for transport in transports:
            transport.abort()
        for sock in (*clients, *accepted, listener):
            sock.close()
        server.close()
        await server.wait_closed()


async def run(args: argparse.Namespace) -> list[Result]:
    for name in ("sockets", "legs", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive")
    with tempfile.TemporaryDirectory(prefix="stagecast-syscalls-") as directory:
        binary = compile_floor(Path(directory))
        kernel = kernel_figures(binary, args.sockets, args.legs, args.rounds)
    python = await python_figures(args.sockets, args.rounds)
    tcp, sendto, mmsg = kernel["tcp_send_us"], kernel["udp_sendto_us"], kernel["udp_sendmmsg_us"]
    where = f"{args.sockets} sockets, median of {args.rounds} rounds"
    legs = f"{args.legs} peers, median of {args.rounds} rounds"
    return [
        Result("tcp_send_us", tcp, "us", f"C, 24 bytes, {where}"),
        Result("tcp_send_woken_us", kernel["tcp_send_woken_us"], "us", "the reader asleep"),
        Result("py_socket_send_us", python["py_socket_send_us"], "us", "a Python loop"),
        Result("asyncio_write_us", python["asyncio_write_us"], "us", "transport.write"),
        Result("asyncio_write_vs_kernel", python["asyncio_write_us"] / tcp, "x"),
        Result("udp_sendto_us", sendto, "us", f"C, 1,200 bytes, {legs}, a socket each"),
        Result("udp_send_connected_us", kernel["udp_send_connected_us"], "us", "connected"),
        Result("udp_sendmmsg_us", mmsg, "us", "one socket, one sendmmsg per round"),
        Result("udp_sendmmsg_vs_sendto", mmsg / sendto, "x"),
    ]
