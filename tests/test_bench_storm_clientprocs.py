"""The storm's pipes to its client processes carry large messages whole, on either loop."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest
import uvloop

from stagecast.bench.clientprocs import Link


async def exchange(size: int) -> tuple[int, ...]:
    here, there = multiprocessing.Pipe()
    sender, receiver = Link(here), Link(there)
    try:
        # Far beyond a pipe's buffer: written from a thread while this loop reads it.
        writing = asyncio.create_task(asyncio.to_thread(sender.send, "results", b"x" * size))
        kind, data = await asyncio.wait_for(receiver.inbox.get(), 10.0)
        await writing
        return (len(data),) if kind == "results" else ()
    finally:
        for link in (sender, receiver):
            link.stop()
            link.conn.close()


@pytest.mark.timeout(30)  # without the fix, the reader waits for bytes never written
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_message_larger_than_the_pipe_arrives_whole(loop: str) -> None:
    size = 4 * 2**20
    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(exchange(size)) == (size,)
