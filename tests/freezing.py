"""A nats-server frozen (SIGSTOP) under a running stack, and what the room log kept meanwhile.

While frozen, the edge's appends go unanswered (its socket buffers them), so it answers a
client's action `UNAVAILABLE` after its deadline; on thawing the server stores what was
buffered, past the action deadline. Used by the retry tests of both SDKs
(tests/test_edge_retried.py, the browser scenario ``write_across_freeze``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator

import httpx
import nats

from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from schemas.log import ACTION_DEADLINE_MS, MetadataSet
from tests.reading import read


@contextlib.contextmanager
def frozen(server: NatsServer) -> Iterator[None]:
    """`server` stopped (SIGSTOP) for the duration of the block, then continued."""
    pid = server.pid
    if pid is None:
        raise RuntimeError("the nats-server is not running")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def unavailable_answers(edge_url: str) -> int:
    """`UNAVAILABLE` error frames the edge has sent (its /metrics)."""
    async with httpx.AsyncClient(base_url=edge_url, timeout=5.0) as http:
        text = (await http.get("/metrics")).text
    found = re.search(r'^stagecast_edge_errors_total\{code="UNAVAILABLE"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


async def metadata_copies(nats_url: str, metadata: str) -> tuple[int, int]:
    """(stored, applicable): `MetadataSet` events setting `metadata` in the room log, and
    those stored within the action deadline (the others the statekeeper refused)."""
    nc = await nats.connect(nats_url)
    try:
        room_log = RoomLog(nc.jetstream())
        last = await room_log.last_seq()
        async with room_log.reader(None, 1) as reader:
            records = await read(reader, last)
    finally:
        await nc.close()
    copies = [
        (r.stored_at, r.event.at)
        for r in records
        if isinstance(r.event, MetadataSet) and r.event.metadata == metadata
    ]
    on_time = [stored for stored, at in copies if stored - at <= ACTION_DEADLINE_MS]
    return len(copies), len(on_time)


__all__ = ["frozen", "metadata_copies", "unavailable_answers"]
