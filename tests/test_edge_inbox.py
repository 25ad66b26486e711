"""A socket's inbox (messages handled one at a time, in order, reading paused while any
wait) and the small `Latch` sessions use instead of `asyncio.Event`."""

from __future__ import annotations

import asyncio

import pytest

from edge.inbox import Inbox
from edge.latch import Latch


class Line:
    """Records what the inbox does to the socket's reading."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


class Handler:
    """Handles each message when the test lets it (`release`), recording the order."""

    def __init__(self) -> None:
        self.started: list[bytes | str | None] = []
        self.finished: list[bytes | str | None] = []
        self.gates: dict[bytes | str | None, asyncio.Event] = {}
        self.failures: list[BaseException] = []

    async def __call__(self, data: bytes | None, text: str | None) -> None:
        key = data if data is not None else text
        self.started.append(key)
        await self.gates.setdefault(key, asyncio.Event()).wait()
        if key == b"boom":
            raise RuntimeError("boom")
        self.finished.append(key)

    def release(self, key: bytes | str) -> None:
        self.gates.setdefault(key, asyncio.Event()).set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_messages_are_handled_one_at_a_time_in_order_with_reading_paused_meanwhile() -> None:
    line, handler = Line(), Handler()
    inbox = Inbox(handler, line, handler.failures.append)
    inbox.put(b"a", None)
    inbox.put(None, "b")
    inbox.put(b"c", None)
    await settle()
    assert handler.started == [b"a"] and len(inbox) == 2 and inbox.busy
    assert line.calls == ["pause"]
    handler.release(b"a")
    handler.release("b")
    await settle()
    # The last waiting message is being handled: none waits, so reading goes on.
    assert handler.started == [b"a", "b", b"c"] and line.calls == ["pause", "resume"]
    assert inbox.busy and len(inbox) == 0
    handler.release(b"c")
    await settle()
    assert handler.finished == [b"a", "b", b"c"]
    assert line.calls == ["pause", "resume"] and not inbox.busy


async def test_an_idle_inbox_has_no_task_and_a_lone_message_never_pauses_reading() -> None:
    line, handler = Line(), Handler()
    inbox = Inbox(handler, line, handler.failures.append)
    handler.release(b"a")
    inbox.put(b"a", None)
    await settle()
    assert handler.finished == [b"a"] and not inbox.busy and line.calls == []


async def test_a_failing_message_is_reported_and_the_next_one_is_handled() -> None:
    line, handler = Line(), Handler()
    inbox = Inbox(handler, line, handler.failures.append)
    inbox.put(b"boom", None)
    inbox.put(b"after", None)
    handler.release(b"boom")
    handler.release(b"after")
    await settle()
    assert [str(e) for e in handler.failures] == ["boom"]
    assert handler.finished == [b"after"]


async def test_stop_cancels_the_message_being_handled_and_forgets_the_rest() -> None:
    line, handler = Line(), Handler()
    inbox = Inbox(handler, line, handler.failures.append)
    inbox.put(b"a", None)
    inbox.put(b"b", None)
    await settle()
    task = inbox.stop()
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        await task
    inbox.put(b"c", None)  # a stopped inbox takes nothing more
    handler.release(b"c")
    await settle()
    assert handler.started == [b"a"] and handler.finished == [] and handler.failures == []


async def test_a_latch_wakes_every_waiter_and_a_cancelled_waiter_disturbs_no_other() -> None:
    latch = Latch()
    first = asyncio.create_task(latch.wait())
    second = asyncio.create_task(latch.wait())
    await settle()
    first.cancel()
    await settle()
    assert not second.done() and not latch.is_set()
    latch.set()
    await asyncio.wait_for(second, 1)
    assert first.cancelled() and latch.is_set()
    await asyncio.wait_for(latch.wait(), 1)  # set already: returns at once
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(Latch().wait(), 0.01)


async def test_a_latch_waited_for_with_a_timeout_says_whether_it_was_set() -> None:
    latch = Latch()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await latch.wait_for(0.05) is False
    assert loop.time() - started >= 0.05
    waiting = asyncio.create_task(latch.wait_for(5.0))
    other = asyncio.create_task(latch.wait())
    await settle()
    latch.set()
    assert await asyncio.wait_for(waiting, 1) is True
    await asyncio.wait_for(other, 1)
    assert await latch.wait_for(0.0) is True  # set already: at once
    cancelled = Latch()
    timed = asyncio.create_task(cancelled.wait_for(5.0))
    await settle()
    timed.cancel()
    await settle()
    assert timed.cancelled() and not cancelled.is_set()
    cancelled.set()  # the cancelled waiter is forgotten: nothing to wake
