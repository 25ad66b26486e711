"""Wiring of one statekeeper process: NATS, the room log, the SQL store, the services."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import signal

from processes.runtime import tune_gc
from roomlog.connect import RECONNECT_BUFFER, connect
from roomlog.log import RoomLog
from roomlog.natslink import NatsLink
from roomlog.retry import RETRY_DEADLINE, RetryPolicy
from statekeeper.queries import Queries
from statekeeper.service import Statekeeper, Tuning
from statekeeper.store import SqlStore

log = logging.getLogger("stagecast.statekeeper")


@dataclasses.dataclass(frozen=True, slots=True)
class StatekeeperConfig:
    nats_url: str
    database_url: str
    api_secret: str
    partitions: int = 1
    owned: tuple[int, ...] = (0,)
    replicas: int = 1
    """Least replicas of the room-log streams (`RoomLog.ensure` never lowers them)."""
    append_retry: float = RETRY_DEADLINE
    """Seconds a timer event or public event append is retried across a leader election."""
    tuning: Tuning = dataclasses.field(default_factory=Tuning)
    connect_timeout: float = 10.0
    """Seconds to reach NATS at start (reconnects afterwards never give up)."""


def cursor_secret(api_secret: str) -> bytes:
    """The key that signs pagination cursors, derived from the API secret."""
    return hashlib.sha256(b"stagecast.cursor:" + api_secret.encode()).digest()


@contextlib.asynccontextmanager
async def running_statekeeper(config: StatekeeperConfig):  # type: ignore[no-untyped-def]
    """Run a statekeeper for the duration of the context; yields the `Statekeeper`."""
    link = NatsLink("statekeeper", log)
    nc = await connect(
        config.nats_url,
        name="stagecast-statekeeper",
        link=link,
        connect_timeout=config.connect_timeout,
        reconnect_buffer=RECONNECT_BUFFER,  # outcomes are published from the fold's loop
    )
    store = await SqlStore.open(config.database_url)
    keeper: Statekeeper | None = None
    queries: Queries | None = None
    try:
        room_log = RoomLog(
            nc.jetstream(),
            partitions=config.partitions,
            replicas=config.replicas,
            retry=RetryPolicy(deadline=config.append_retry),
        )
        await room_log.ensure()
        keeper = Statekeeper(nc, room_log, store, partitions=config.owned, tuning=config.tuning)
        keeper.link = link
        await keeper.start()
        queries = Queries(keeper, cursor_secret(config.api_secret))
        await queries.start()
        yield keeper
    finally:
        log.info("statekeeper stopping")
        if queries is not None:
            try:
                await asyncio.wait_for(queries.stop(), 5)
            except TimeoutError:
                log.error("the read API did not unsubscribe in time")
        if keeper is not None:
            await keeper.stop()
        log.info("statekeeper stopped; closing the store and NATS")
        await store.close()
        # Everything is stopped: flush what is buffered and close (a drain would wait on
        # the log reader's subscription, already gone, for its whole timeout).
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await nc.close()


async def serve(config: StatekeeperConfig) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_statekeeper(config) as keeper:
        await keeper.wait_caught_up()
        log.info("statekeeper ready at log sequence %d", keeper.applied_seq)
        print(f"statekeeper ready seq={keeper.applied_seq}", flush=True)
        tune_gc()
        await stop.wait()
