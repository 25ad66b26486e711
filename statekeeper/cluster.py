"""Wiring of a statekeeper that shares the partitions with others (`--leases`).

NATS, the room log (its partition count checked against the stream's), the shared SQL
store, the leases (`statekeeper.leasing`), the partitions held (`statekeeper.partitions`)
and the read API's router (`statekeeper.routing`). Several statekeepers need one shared
PostgreSQL database; on SQLite a statekeeper refuses to run beside another
(`SeveralNeedPostgres`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from processes.runtime import tune_gc
from roomlog.connect import RECONNECT_BUFFER, connect
from roomlog.log import RoomLog
from roomlog.natslink import NatsLink
from roomlog.retry import RetryPolicy
from statekeeper.agents import AgentDispatcher, start_dispatcher
from statekeeper.leasing import Leasing, open_bucket
from statekeeper.main import StatekeeperConfig, cursor_secret
from statekeeper.metrics import MetricsServer, StatekeeperMetrics
from statekeeper.partitions import PartitionHost, check_partitions
from statekeeper.routing import Router
from statekeeper.service import Statekeeper
from statekeeper.store import SqlStore

log = logging.getLogger("stagecast.statekeeper")


@dataclasses.dataclass(slots=True)
class LeasedStatekeeper:
    """One statekeeper process sharing the partitions: its leases, partitions, router."""

    leasing: Leasing
    host: PartitionHost
    router: Router
    metrics: MetricsServer | None = None
    """The `/metrics` listener (`--metrics-port`), when asked for."""

    def held(self) -> list[int]:
        """The partitions whose lease this process holds now."""
        return self.leasing.held()


@contextlib.asynccontextmanager
async def running_leased(config: StatekeeperConfig) -> AsyncIterator[LeasedStatekeeper]:
    """Run a leasing statekeeper for the duration of the context."""
    link = NatsLink("statekeeper", log)
    nc = await connect(
        config.nats_url,
        name="stagecast-statekeeper",
        link=link,
        role="statekeeper",
        auth=config.nats_auth,
        connect_timeout=config.connect_timeout,
        reconnect_buffer=RECONNECT_BUFFER,
    )
    store: SqlStore | None = None
    leasing: Leasing | None = None
    router: Router | None = None
    dispatcher: AgentDispatcher | None = None
    metrics: StatekeeperMetrics | None = None
    server: MetricsServer | None = None
    try:
        js = nc.jetstream()
        await check_partitions(js, config.partitions)
        room_log = RoomLog(
            js,
            partitions=config.partitions,
            replicas=config.replicas,
            retry=RetryPolicy(deadline=config.append_retry),
        )
        await room_log.ensure()
        store = await SqlStore.open(config.database_url)
        host = PartitionHost(
            nc,
            room_log,
            store,
            cursor_secret=cursor_secret(config.api_secret),
            tuning=config.tuning,
        )
        leasing = Leasing(
            await open_bucket(js, replicas=config.replicas),
            host,
            partitions=config.partitions,
            owner=config.owner_id,
            timing=config.lease_timing,
            single=store.dialect == "sqlite",
            witness=config.witness,
        )
        router = Router(nc, host, config.partitions, link=link)
        await router.start()
        # Agent jobs are room state: each process offers those of the partitions it holds.
        holder = leasing

        def held_keepers() -> list[Statekeeper]:
            return [host.keepers[p] for p in holder.held() if p in host.keepers]

        dispatcher = await start_dispatcher(
            nc, room_log, held_keepers, config.tuning.agent_worker_timeout_ms
        )
        if config.metrics_port is not None:
            held_by = leasing

            def held() -> list[tuple[int, Statekeeper]]:
                return [(p, host.keepers[p]) for p in held_by.held() if p in host.keepers]

            metrics = StatekeeperMetrics(nc, leasing.owner, held)
            await metrics.start()
            server = MetricsServer(metrics, config.metrics_host, config.metrics_port)
            await server.start()
            log.info("statekeeper /metrics on %s:%d", server.host, server.port)
        await leasing.start()
        log.info("statekeeper %s sharing %d partitions", leasing.owner, config.partitions)
        yield LeasedStatekeeper(leasing, host, router, server)
    finally:
        log.info("statekeeper stopping")
        if dispatcher is not None:
            await dispatcher.stop()
        if server is not None:
            await server.stop()
        if metrics is not None:
            await metrics.stop()
        if router is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(router.stop(), 5)
        if leasing is not None:
            await leasing.stop()
        if store is not None:
            await store.close()
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await nc.close()


async def serve_leased(config: StatekeeperConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set; exit with the reason if the leases refuse to go on."""
    async with running_leased(config) as leased:
        metrics = leased.metrics
        shown = f" metrics={metrics.host}:{metrics.port}" if metrics is not None else ""
        print(f"statekeeper ready owner={leased.leasing.owner}{shown}", flush=True)
        tune_gc()
        done = asyncio.create_task(leased.leasing.stopped.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([done, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in (done, stopping):
            task.cancel()
        failed = leased.leasing.failed
    if failed is not None:
        raise SystemExit(f"stagecast statekeeper: {failed}")
