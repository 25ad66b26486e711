"""`edge.deadlines.Deadlines`: many deadlines on one loop timer."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from edge.deadlines import Deadlines


async def test_each_deadline_fires_once_not_before_its_time_and_within_the_resolution() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, resolution=0.02)
    start = loop.time()
    fired: dict[str, float] = {}

    def at(name: str) -> None:
        fired.setdefault(name, loop.time() - start)

    for name, seconds in (("late", 0.15), ("early", 0.05), ("middle", 0.1)):
        deadlines.add(seconds, functools.partial(at, name))
    assert len(deadlines) == 3
    await asyncio.sleep(0.3)
    assert list(fired) == ["early", "middle", "late"]
    for name, seconds in (("early", 0.05), ("middle", 0.1), ("late", 0.15)):
        assert seconds <= fired[name] < seconds + 0.02 + 0.05, (name, fired)
    assert len(deadlines) == 0


async def test_a_cancelled_deadline_never_fires_and_the_others_still_do() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, resolution=0.01)
    fired: list[int] = []
    first = deadlines.add(0.03, lambda: fired.append(1))
    deadlines.add(0.06, lambda: fired.append(2))
    third = deadlines.add(0.09, lambda: fired.append(3))
    deadlines.cancel(first)
    deadlines.cancel(third)
    deadlines.cancel(third)  # twice: a no-op
    assert len(deadlines) == 1
    await asyncio.sleep(0.15)
    assert fired == [2]


async def test_an_earlier_deadline_added_later_moves_the_timer_up() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, resolution=0.01)
    fired: list[str] = []
    deadlines.add(5.0, lambda: fired.append("far"))
    deadlines.add(0.03, lambda: fired.append("near"))
    await asyncio.sleep(0.1)
    assert fired == ["near"]
    deadlines.close()
    assert len(deadlines) == 0


async def test_a_failing_callback_is_reported_and_the_rest_still_run() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        deadlines = Deadlines(loop, resolution=0.01)
        fired: list[int] = []

        def broken() -> None:
            raise RuntimeError("boom")

        deadlines.add(0.02, broken)
        deadlines.add(0.02, lambda: fired.append(1))
        deadlines.add(0.04, lambda: deadlines.add(0.01, lambda: fired.append(2)))
        await asyncio.sleep(0.15)
    finally:
        loop.set_exception_handler(previous)
    assert fired == [1, 2]
    assert [str(c["exception"]) for c in reported] == ["boom"]
