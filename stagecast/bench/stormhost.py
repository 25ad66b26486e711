"""The machine side of `stagecast bench storm`: descriptors, ports, processes, sampling.

`plan_processes` sizes the edges and client processes from the descriptor hard limit (one
process holds at most ``hard - SPARE_FDS`` sockets); `raise_nofile` raises the soft limit
for the children; `Monitor` samples each role's RSS and CPU and stops a storm when a
service dies or memory runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from rich.console import Console

from edge.config import default_max_connections
from stagecast.bench.clientprocs import ClientProcs
from stagecast.up import Stack

SPARE_FDS = 512
"""Descriptors an edge or client process keeps for everything but its clients' sockets."""
_SAMPLE_S = 0.25
MACHINE = "machine"
"""The key of the whole machine's busy CPU seconds in `Monitor.cpu()`."""
console = Console(stderr=True)


def nofile_hard() -> int:
    """The RLIMIT_NOFILE hard limit (a number even when it is unlimited)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    return hard


def plan_processes(clients: int, edges: int, client_procs: int) -> tuple[int, int]:
    """(edges, client processes): each given one as is, each 0 sized from the hard limit:
    a client process holds `hard - SPARE_FDS` sockets, an edge what its connection cap at
    that limit lets it serve (`edge.config.default_max_connections`, which also keeps room
    for an accept burst and the refusals: 15,876 at 20,000)."""
    hard = nofile_hard()
    per_process = max(1, hard - SPARE_FDS)
    per_edge = min(per_process, default_max_connections(hard))
    fit_edges = max(1, math.ceil(clients / per_edge))
    fit_procs = max(1, math.ceil(clients / per_process))
    return edges or fit_edges, client_procs or fit_procs


def raise_nofile(per_process: int) -> int:
    """Raise RLIMIT_NOFILE to its hard limit (children inherit it); stop if still too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)[0], nofile_hard()
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < per_process + SPARE_FDS:
        raise SystemExit(
            f"RLIMIT_NOFILE hard limit is {hard}: one edge or client process here needs about "
            f"{per_process + SPARE_FDS} descriptors. Raise the hard limit (ulimit -Hn, "
            "limits.conf, systemd LimitNOFILE) or spread the sockets with more --edges and "
            "--client-procs."
        )
    return hard


def source_hosts(per_edge: int) -> list[str]:
    """Loopback source addresses, so no (source, edge) pair runs out of ephemeral ports."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    usable = int((high - low + 1) * 0.8)
    return [f"127.0.0.{k + 1}" for k in range(min(250, math.ceil(per_edge / usable)))]


def free_port_block(count: int) -> int:
    """A first port such that `count` consecutive ports (below the ephemeral range) are free."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1")


@contextlib.contextmanager
def data_dir(path: str | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="stagecast-storm-") as tmp:
        yield Path(tmp)


class Monitor:
    """Samples the services' and clients' RSS and CPU; raises `stop` when the run must end."""

    def __init__(self, stack: Stack, clients: ClientProcs, data_dir: Path) -> None:
        def proc(pid: int | None) -> list[psutil.Process]:
            return [psutil.Process(pid)] if pid is not None else []

        self.stack = stack
        self.data_dir = data_dir
        self.roles: dict[str, list[psutil.Process]] = {
            "edge": [psutil.Process(c.pid) for c in stack.children[1:]],
            "statekeeper": proc(stack.children[0].pid),
            "nats": proc(stack.nats.pid if stack.nats else None),
            "clients": [psutil.Process(p.pid) for p in clients.procs if p.pid is not None],
        }
        self.rss_mb = dict.fromkeys(self.roles, 0.0)
        self.busy = dict.fromkeys(self.roles, 0.0)
        """CPU use over the last sample, in cores."""
        self.stop = asyncio.Event()
        self.reason = ""

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far, per role, and the whole machine's busy time."""
        out = dict.fromkeys(self.roles, 0.0)
        for role, procs in self.roles.items():
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    out[role] += times.user + times.system
        machine = psutil.cpu_times()
        out[MACHINE] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return out

    def reset(self) -> None:
        self.rss_mb = dict.fromkeys(self.roles, 0.0)

    def rss(self) -> dict[str, float]:
        """Resident memory now, in bytes, per role (summed over its processes)."""
        out = dict.fromkeys(self.roles, 0.0)
        for role, procs in self.roles.items():
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    out[role] += p.memory_info().rss
        return out

    def halt(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            console.print(f"[red]stopping the storm:[/] {reason}")
            self.stop.set()

    async def run(self) -> None:
        before, at = self.cpu(), time.monotonic()
        while True:
            await asyncio.sleep(_SAMPLE_S)
            for role, procs in self.roles.items():
                rss = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                self.rss_mb[role] = max(self.rss_mb[role], rss / 2**20)
            now, now_at = self.cpu(), time.monotonic()
            self.busy = {r: (now[r] - before[r]) / (now_at - at) for r in self.roles}
            before, at = now, now_at
            for i, child in enumerate(self.stack.children):
                if child.poll() is not None:
                    log = "statekeeper.log" if i == 0 else f"edge-{i - 1}.log"
                    tail = ""
                    with contextlib.suppress(OSError):
                        tail = (self.data_dir / log).read_text(errors="replace")[-600:]
                    self.halt(f"{log[:-4]} exited with {child.returncode}: ...{tail}")
            memory = psutil.virtual_memory()
            if memory.available < min(2**30, memory.total * 0.05):
                self.halt(f"memory: only {memory.available / 2**20:.0f} MiB left")


__all__ = [
    "MACHINE",
    "SPARE_FDS",
    "Monitor",
    "data_dir",
    "free_port_block",
    "nofile_hard",
    "plan_processes",
    "raise_nofile",
    "source_hosts",
]
