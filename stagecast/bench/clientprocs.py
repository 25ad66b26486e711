"""The storm's client processes and their pipes (multiprocessing, spawned).

`ClientProcs` starts `count` processes (`process_main`, on uvloop or asyncio), each with
one `stagecast.bench.simclients.Fleet` per storm. Pipe protocol, tuples ``(kind, *args)``:
commands in (`begin`, `wave`, `final`, `hold`, `tally`, `churn`, `finish`, `exit`), reports
out (`progress`, `wave_done`, `exact`, `tally`, `churn_done`, `results`, `closed`). Every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from stagecast.bench.simclients import Churn, Fleet, Wave

Msg = tuple[Any, ...]
_TICK_S = 1.0


class Link:
    """One end of a pipe, read by the event loop into `inbox`; EOF arrives as ``("eof",)``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self.open = True
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)
        # uvloop makes a watched descriptor non-blocking: a large message (a process's
        # results) would then be written in part, and the reader would wait for the rest.
        os.set_blocking(conn.fileno(), True)

    def _readable(self) -> None:
        try:
            self.inbox.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            self.stop()
            self.inbox.put_nowait(("eof",))

    def send(self, *message: Any) -> None:
        if self.open:
            with contextlib.suppress(OSError):
                self.conn.send(message)

    def stop(self) -> None:
        if self.open:
            self.open = False
            asyncio.get_running_loop().remove_reader(self.conn.fileno())


class ClientProcs:
    """The benchmark's side: `count` client processes and their pipes."""

    def __init__(
        self, count: int, edges: list[str], hosts: list[str], loop: str = "asyncio"
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.links: list[Link] = []
        for index in range(count):
            here, there = ctx.Pipe()
            args = (there, (index, count, edges, hosts), loop)
            proc = ctx.Process(target=process_main, args=args, name=f"storm-{index}", daemon=True)
            proc.start()
            there.close()
            self.procs.append(proc)
            self.links.append(Link(here))

    def send_all(self, *message: Any) -> None:
        for link in self.links:
            link.send(*message)

    async def collect(
        self, kind: str, until: float, stop: asyncio.Event | None = None, on_progress: Any = None
    ) -> dict[int, Msg]:
        """The next `kind` message of each process, until `until` (monotonic) or `stop`.

        `on_progress` gets the latest `progress` message of each process as they come."""
        got: dict[int, Msg] = {}
        progress: dict[int, Msg] = {}
        while True:
            for index, link in enumerate(self.links):
                while index not in got and not link.inbox.empty():
                    message = link.inbox.get_nowait()
                    if message[0] == kind:
                        got[index] = message
                    elif message[0] == "progress":
                        progress[index] = message
            if on_progress is not None and progress:
                on_progress(progress)
            waiting = [i for i, link in enumerate(self.links) if i not in got and link.open]
            if not waiting or time.monotonic() >= until or (stop and stop.is_set()):
                return got
            await asyncio.sleep(0.02)

    async def close(self, limit_s: float = 10.0) -> None:
        """Ask every process to exit; terminate (then kill) those left after `limit_s`."""
        self.send_all("exit")
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and any(p.is_alive() for p in self.procs):
            await asyncio.sleep(0.05)
        for proc in self.procs:
            for end in (proc.terminate, proc.kill):
                if proc.is_alive():
                    end()
                    proc.join(2.0)
        for link in self.links:
            link.stop()
            link.conn.close()


Spec = tuple[int, int, list[str], list[str]]
"""A client process: its index, the number of processes, edge URLs, source addresses."""


async def _serve(conn: Connection, spec: Spec) -> None:
    index, procs, edges, hosts = spec
    link = Link(conn)
    fleet = Fleet(index, procs, edges, hosts)
    tasks: set[asyncio.Task[None]] = set()

    async def wave(w: Wave, join_timeout: float) -> None:
        done = asyncio.get_running_loop().create_task(fleet.run_wave(w, join_timeout))
        try:
            while not done.done():
                link.send("progress", w.name, fleet.joined, fleet.failed)
                gc.freeze()  # keep the collector off the ever-growing set of live clients
                await asyncio.wait({done}, timeout=_TICK_S)
        finally:
            done.cancel()
        failed = done.exception()
        link.send("wave_done", {"last_joined": 0.0, "joined": 0} if failed else done.result())

    async def churn(c: Churn) -> None:
        link.send("churn_done", await fleet.churn(c))

    async def exact() -> None:
        while fleet.exact < fleet.joined:  # dropped clients never get there: bounded by finish
            await asyncio.sleep(0.01)
        link.send("exact", fleet.exact)

    storm_end = 0.0
    while True:
        command = await link.inbox.get()
        if command[0] in ("finish", "exit", "eof"):
            for task in list(tasks):
                task.cancel()
        if command[0] == "begin":
            fleet = Fleet(index, procs, edges, hosts)
        elif command[0] == "tally":
            link.send("tally", fleet.count_frames)
        elif command[0] == "hold":
            fleet.hold(storm_end)
        elif command[0] in ("wave", "final", "churn"):
            if command[0] == "final":
                fleet.set_target(command[1])
                storm_end = command[2]
            job = (
                wave(command[1], command[2]) if command[0] == "wave"
                else churn(command[1]) if command[0] == "churn"
                else exact()
            )  # fmt: skip
            task = asyncio.get_running_loop().create_task(job)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif command[0] == "finish":
            link.send("results", fleet.results(storm_end, command[1]))
            link.send("closed", await fleet.close(command[2]))
        else:
            return


def process_main(conn: Connection, spec: Spec, loop: str = "asyncio") -> None:
    """Entry point of a client process (a multiprocessing target); `loop`: asyncio or uvloop."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(_serve(conn, spec))
    else:
        asyncio.run(_serve(conn, spec))


__all__ = ["ClientProcs", "Link", "Msg", "process_main"]
