"""A one-way flag to await, kept small for the thousands of sockets an edge holds.

`asyncio.Event` allocates a deque of waiters for each flag (~0.6 KiB); a session has two
flags and its join one more, and almost none is ever awaited. A `Latch` holds a future
per waiter, only while someone waits.
"""

from __future__ import annotations

import asyncio
import contextlib


class Latch:
    """Set once; `wait` returns once it is set (at once if it is). Cancelling one waiter
    does not disturb the others."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None
        """A future per waiter (None while nobody waits)."""

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        waiter = loop.create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        return waiter

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        if self._waiters is not None:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = self._waiter(asyncio.get_running_loop())
        try:
            await waiter
        finally:
            self._forget(waiter)

    async def wait_for(self, timeout: float) -> bool:
        """Wait until set, at most `timeout` seconds; whether it is set (also when it was
        set in the same loop pass as the timeout). No task and no `asyncio.wait` (its
        coroutine, set and callbacks) for the wait: a future and a timer."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter(loop)
        timer = loop.call_later(timeout, _time_up, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._forget(waiter)
        return self._set

    def __repr__(self) -> str:
        return f"<Latch {'set' if self._set else 'unset'}>"


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


__all__ = ["Latch"]
