"""Wiring of one statekeeper process: NATS, the room log, the SQL store, the services."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import signal
from collections.abc import AsyncIterator

from processes.runtime import tune_gc
from roomlog.connect import RECONNECT_BUFFER, NatsAuth, connect
from roomlog.log import RoomLog
from roomlog.natslink import NatsLink
from roomlog.retry import RETRY_DEADLINE, RetryPolicy
from statekeeper.agents import AgentDispatcher, start_dispatcher
from statekeeper.leases import LeaseTiming, Witness
from statekeeper.leasing import SoloGuard, open_bucket
from statekeeper.metrics import MetricsServer, StatekeeperMetrics
from statekeeper.partitions import check_partitions
from statekeeper.queries import Queries
from statekeeper.service import Statekeeper, Tuning
from statekeeper.store import SqlStore

log = logging.getLogger("stagecast.statekeeper")


@dataclasses.dataclass(frozen=True, slots=True)
class StatekeeperConfig:
    nats_url: str
    database_url: str
    api_secret: str
    nats_auth: NatsAuth | None = None
    """NKey/creds and TLS files for NATS (a password goes in `nats_url`)."""
    partitions: int = 1
    owned: tuple[int, ...] = (0,)
    replicas: int = 1
    """Least replicas of the room-log streams (`RoomLog.ensure` never lowers them)."""
    append_retry: float = RETRY_DEADLINE
    """Seconds a timer event or public event append is retried across a leader election."""
    tuning: Tuning = dataclasses.field(default_factory=Tuning)
    connect_timeout: float = 10.0
    """Seconds to reach NATS at start (reconnects afterwards never give up)."""
    leases: bool = False
    """Share the partitions with other statekeepers through leases (`owned` is then
    ignored); needs PostgreSQL when several run (`statekeeper.cluster`)."""
    lease_timing: LeaseTiming = dataclasses.field(default_factory=LeaseTiming)
    owner_id: str | None = None
    """This statekeeper's id in the leases bucket (default: a new random one)."""
    witness: Witness | None = None
    """Told of every write a lease lets through (audits and tests)."""
    metrics_port: int | None = None
    """Serve `/metrics` on this port (`statekeeper.metrics`; None: no listener, 0: any)."""
    metrics_host: str = "127.0.0.1"


def cursor_secret(api_secret: str) -> bytes:
    """The key that signs pagination cursors, derived from the API secret."""
    return hashlib.sha256(b"stagecast.cursor:" + api_secret.encode()).digest()


@contextlib.asynccontextmanager
async def running_statekeeper(config: StatekeeperConfig):  # type: ignore[no-untyped-def]
    """Run a statekeeper for the duration of the context; yields the `Statekeeper` (with
    `leases`: the `statekeeper.cluster.LeasedStatekeeper`)."""
    if config.leases:
        from statekeeper.cluster import running_leased

        async with running_leased(config) as leased:
            yield leased
        return
    async with _running_solo(config) as (keeper, _guard):
        yield keeper


@contextlib.asynccontextmanager
async def _running_solo(
    config: StatekeeperConfig,
) -> AsyncIterator[tuple[Statekeeper, SoloGuard]]:
    """A statekeeper of every partition, without leases, and the guard that refuses it
    beside another statekeeper on the same NATS (`SoloGuard`)."""
    link = NatsLink("statekeeper", log)
    nc = await connect(
        config.nats_url,
        name="stagecast-statekeeper",
        link=link,
        role="statekeeper",
        auth=config.nats_auth,
        connect_timeout=config.connect_timeout,
        reconnect_buffer=RECONNECT_BUFFER,  # outcomes are published from the fold's loop
    )
    store = await SqlStore.open(config.database_url)
    keeper: Statekeeper | None = None
    queries: Queries | None = None
    dispatcher: AgentDispatcher | None = None
    guard: SoloGuard | None = None
    metrics: StatekeeperMetrics | None = None
    server: MetricsServer | None = None
    try:
        await check_partitions(nc.jetstream(), config.partitions)
        room_log = RoomLog(
            nc.jetstream(),
            partitions=config.partitions,
            replicas=config.replicas,
            retry=RetryPolicy(deadline=config.append_retry),
        )
        await room_log.ensure()
        guard = SoloGuard(
            await open_bucket(nc.jetstream(), replicas=config.replicas),
            sqlite=store.dialect == "sqlite",
            timing=config.lease_timing,
        )
        await guard.start()
        keeper = Statekeeper(nc, room_log, store, partitions=config.owned, tuning=config.tuning)
        keeper.link = link
        await keeper.start()
        queries = Queries(keeper, cursor_secret(config.api_secret))
        await queries.start()
        solo_keeper = keeper
        dispatcher = await start_dispatcher(
            nc, room_log, lambda: [solo_keeper], config.tuning.agent_worker_timeout_ms
        )
        keeper.agents = dispatcher
        if config.metrics_port is not None:
            solo = keeper
            metrics = StatekeeperMetrics(
                nc, guard.owner, lambda: [(p, solo) for p in solo.partitions]
            )
            await metrics.start()
            server = MetricsServer(metrics, config.metrics_host, config.metrics_port)
            await server.start()
            log.info("statekeeper /metrics on %s:%d", server.host, server.port)
        yield keeper, guard
    finally:
        log.info("statekeeper stopping")
        if dispatcher is not None:
            await dispatcher.stop()
        if server is not None:
            await server.stop()
        if metrics is not None:
            await metrics.stop()
        if queries is not None:
            try:
                await asyncio.wait_for(queries.stop(), 5)
            except TimeoutError:
                log.error("the read API did not unsubscribe in time")
        if keeper is not None:
            await keeper.stop()
        if guard is not None:  # announced until the last snapshot is written
            await guard.stop()
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
    if config.leases:
        from statekeeper.cluster import serve_leased

        await serve_leased(config, stop)
        return
    async with _running_solo(config) as (keeper, guard):
        await keeper.wait_caught_up()
        log.info("statekeeper ready at log sequence %d", keeper.applied_seq)
        print(f"statekeeper ready seq={keeper.applied_seq}", flush=True)
        tune_gc()
        refused = asyncio.create_task(guard.stopped.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([refused, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in (refused, stopping):
            task.cancel()
        failed = guard.failed
    if failed is not None:
        raise SystemExit(f"stagecast statekeeper: {failed}")
