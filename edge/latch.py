"""A one-way flag to await, kept small for the thousands of sockets an edge holds.

`asyncio.Event` allocates a deque of waiters for each flag (~0.6 KiB); a session has two
flags and its join one more, and almost none is ever awaited. A `Latch` holds a future
only once someone waits.
"""

from __future__ import annotations

import asyncio


class Latch:
    """Set once; `wait` returns once it is set (at once if it is). Cancelling one waiter
    does not disturb the others."""

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._future)

    async def wait_for(self, timeout: float) -> bool:
        """Wait until set, at most `timeout` seconds; whether it is set (also when it was
        set in the same loop pass as the timeout). No task is made for the wait."""
        if self._set:
            return True
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.wait((self._future,), timeout=timeout)
        return self._set

    def __repr__(self) -> str:
        return f"<Latch {'set' if self._set else 'unset'}>"


__all__ = ["Latch"]
