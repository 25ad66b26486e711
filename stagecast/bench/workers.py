"""Benchmark worker processes driven over a pipe: one command at a time, every wait bounded.

The parent holds a `Worker` (a spawned process and its end of a pipe) and awaits
`call(command, *args)`; the child runs `serve(conn, handlers, ...)`, which answers each
command with what its handler returned. Nothing waits forever: every call has a timeout,
a child exits when its lifetime ends or its parent's end of the pipe closes, and
`Worker.close()` asks politely, then kills. Used by `stagecast bench media`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Awaitable, Callable, Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

CALL_TIMEOUT = 60.0
"""Seconds a command may take unless the call says otherwise."""

CLOSE_GRACE = 10.0
"""Seconds a worker gets to close its peer connections before it is killed."""

Handler = Callable[..., Awaitable[Any]]


class WorkerError(Exception):
    """A benchmark worker failed."""

    def __init__(self, worker: str, command: str, reason: str) -> None:
        super().__init__(f"worker {worker}: {command}: {reason}")
        self.worker = worker
        self.command = command
        self.reason = reason


class WorkerTimeout(WorkerError):
    """A worker did not answer a command in time."""

    def __init__(self, worker: str, command: str, timeout: float) -> None:
        super().__init__(worker, command, f"no answer in {timeout:.0f} s")
        self.timeout = timeout


class Worker:
    """A spawned process that runs `target(conn, *args)` and answers commands on `conn`.

    `target` must be a module-level function (it is pickled by name) that ends by running
    `serve`. `close()` is idempotent.
    """

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self._conn, theirs = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=target, args=(theirs, *args), name=name, daemon=True
        )
        self._process.start()
        theirs.close()
        self._closed = False

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None  # started in __init__
        return pid

    async def call(self, command: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Send a command and return its handler's result; raises `WorkerError`."""
        if self._closed:
            raise WorkerError(self.name, command, "closed")
        try:
            self._conn.send((command, args))
            ready = await asyncio.to_thread(self._conn.poll, timeout)
            if not ready:
                raise WorkerTimeout(self.name, command, timeout)
            status, value = await asyncio.to_thread(self._conn.recv)
        except (EOFError, OSError) as exc:
            raise WorkerError(self.name, command, f"pipe closed ({exc!r})") from exc
        if status != "ok":
            raise WorkerError(self.name, command, str(value))
        return value

    async def close(self) -> None:
        """Ask the worker to close, wait `CLOSE_GRACE`, then kill it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._conn.send(("close", ()))
        await asyncio.to_thread(self._process.join, CLOSE_GRACE)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, CLOSE_GRACE)
        self._conn.close()


async def serve(
    conn: Connection,
    handlers: Mapping[str, Handler],
    *,
    lifetime: float,
    on_close: Callable[[], Awaitable[None]],
) -> None:
    """Answer the parent's commands until "close", a closed pipe or `lifetime` seconds.

    Each reply is ``("ok", result)`` or ``("error", "ExceptionName: message")``;
    `on_close()` runs in every case.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime
    try:
        while loop.time() < deadline:
            if not await asyncio.to_thread(conn.poll, 0.5):
                continue
            try:
                command, args = conn.recv()
            except EOFError:
                return  # the parent is gone
            if command == "close":
                return
            handler = handlers.get(command)
            try:
                if handler is None:
                    raise KeyError(f"unknown command {command!r}")
                reply: tuple[str, Any] = ("ok", await handler(*args))
            except Exception as exc:
                reply = ("error", f"{type(exc).__name__}: {exc}")
            conn.send(reply)
    finally:
        try:
            await asyncio.wait_for(on_close(), CLOSE_GRACE)
        finally:
            conn.close()


def set_priority(niceness: int) -> int:
    """Set this process's nice value (call first: threads started later inherit it).

    Raising priority (a negative value) needs privileges; without them nothing changes.
    Returns the nice value in force.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    return os.getpriority(os.PRIO_PROCESS, 0)
