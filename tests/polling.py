"""Wait for a condition in tests without sleeping a guessed amount of time."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T: ...


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Call `check` until it returns a truthy value without raising; return that value.

    `check` may be sync or async. On timeout, raise `AssertionError` naming `what` and the
    last reason it was still waiting (the exception it raised or the value it returned). A
    single async check is also cut off at the deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    label = what or getattr(check, "__name__", repr(check))
    last = "it never ran"
    attempts = 0
    while True:
        attempts += 1
        try:
            result = check()
            if inspect.isawaitable(result):
                remaining = max(deadline - loop.time(), interval)
                result = await asyncio.wait_for(result, remaining)
        except Exception as exc:  # an assertion or error: still waiting
            last = f"raised {type(exc).__name__}: {exc}"
        else:
            if result:
                return cast(T, result)
            last = f"returned {result!r}"
        if loop.time() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s ({attempts} attempts) waiting for {label}; "
                f"last: {last}"
            )
        await asyncio.sleep(interval)


async def settled(
    read: Callable[[], int], *, what: str, quiet: float = 0.5, timeout: float = 15.0
) -> int:
    """Wait until `read()` stops changing for `quiet` seconds; return its value.

    For counters that must stop (packets while muted, frames after unsubscribing): raise
    `AssertionError` naming `what` if it is still changing after `timeout` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value, since = read(), loop.time()
    while loop.time() - since < quiet:
        if loop.time() > deadline:
            raise AssertionError(f"{what} still changing after {timeout} s (now {value})")
        await asyncio.sleep(0.02)
        if read() != value:
            value, since = read(), loop.time()
    return value
