"""The partitions one statekeeper process holds: a `Statekeeper` per leased partition.

When several statekeepers share the log (`--leases`), each partition whose lease this
process holds gets its own `Statekeeper`, folding only that partition: on gain it loads
the partition's snapshots from the shared store and replays the partition's log from its
checkpoint (the ordinary recovery, per partition), then answers that partition's reads
on `stagecast.sk.part.<p>`; on loss it stops at once and writes nothing more; given back
(balance, shutdown) it stops cleanly with a last snapshot while the lease still holds.

Every write a partition's `Statekeeper` makes goes through its `Fence`: outcomes, timer
appends and public events only while the lease holds on this process's clock, roster
rows and snapshots only in a transaction that claims the partition's `partition_owners`
row at the lease's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import nats.js.errors

from roomlog.seam import CoreLink, RoomLogPort
from schemas import subjects
from statekeeper.errors import PartitionsMismatch
from statekeeper.leases import Fence
from statekeeper.queries import Queries
from statekeeper.service import Statekeeper, Tuning
from statekeeper.store import SqlStore

log = logging.getLogger("stagecast.statekeeper.partitions")


START_RETRY_S = 0.2
"""The first pause before a partition whose start failed is started again (doubling)."""
START_RETRY_MAX_S = 2.0


async def check_partitions(js: Any, partitions: int) -> None:
    """Refuse a partition count other than the one the log's stream was created with."""
    try:
        info = await js.stream_info(subjects.LOG_STREAM)
    except nats.js.errors.NotFoundError:
        return
    transform = info.config.subject_transform
    want = subjects.log_transform_destination(partitions)
    if transform is not None and transform.dest != want:
        raise PartitionsMismatch(str(transform.dest), partitions)


class PartitionHost:
    """The `Statekeeper`s of the partitions this process leases (a `leasing.Holder`)."""

    def __init__(
        self,
        nc: CoreLink,
        room_log: RoomLogPort,
        store: SqlStore,
        *,
        cursor_secret: bytes,
        tuning: Tuning | None = None,
        on_keeper: Callable[[Statekeeper], None] | None = None,
    ) -> None:
        self.nc = nc
        self.room_log = room_log
        self.store = store
        self.cursor_secret = cursor_secret
        self.tuning = tuning or Tuning()
        self.on_keeper = on_keeper
        self.keepers: dict[int, Statekeeper] = {}
        """Every partition being recovered or folded here."""
        self.queries: dict[int, Queries] = {}
        """The partitions that answer reads (recovered: caught up with the log)."""
        self._starting: dict[int, asyncio.Task[None]] = {}

    # ----------------------------------------------------------------------- Holder

    async def gain(self, fence: Fence) -> None:
        """Start folding `fence.partition`; recovery goes on in the background."""
        p = fence.partition
        keeper = self._keeper(fence)
        self.keepers[p] = keeper
        self._starting[p] = asyncio.create_task(self._start(fence, keeper))

    def _keeper(self, fence: Fence) -> Statekeeper:
        p = fence.partition
        keeper = Statekeeper(
            self.nc,
            self.room_log,
            self.store.scoped(p, fence),
            partitions=(p,),
            tuning=self.tuning,
            fence=fence,
        )
        if self.on_keeper is not None:
            self.on_keeper(keeper)
        return keeper

    async def _start(self, fence: Fence, keeper: Statekeeper) -> None:
        """Recover the partition, starting again with a new keeper while a start fails (a
        NATS election under way): the lease is held, so nobody else would serve it."""
        p = fence.partition
        loop = asyncio.get_running_loop()
        started = loop.time()
        for attempt in itertools.count():
            try:
                await keeper.start()
                break
            except Exception as exc:
                log.warning(
                    "partition %d: start failed (%s: %s); starting again",
                    p,
                    type(exc).__name__,
                    exc,
                )
                with contextlib.suppress(Exception):
                    await keeper.stop(last_snapshot=False)
                with contextlib.suppress(Exception):
                    await keeper.store.close()
                await asyncio.sleep(min(START_RETRY_S * 2**attempt, START_RETRY_MAX_S))
                keeper = self._keeper(fence)
                self.keepers[p] = keeper
        await keeper.wait_caught_up()
        queries = Queries(
            keeper,
            self.cursor_secret,
            subject=subjects.statekeeper_partition_api(p),
            queue="",
        )
        await queries.start()
        self.queries[p] = queries
        took = loop.time() - started
        log.info("partition %d recovered at log sequence %d in %.2f s", p, keeper.applied_seq, took)

    async def lose(self, partition: int) -> None:
        """Stop at once: no last snapshot, nothing more written (the fence is lost)."""
        await self._stop(partition, last_snapshot=False)

    async def give_back(self, partition: int) -> None:
        """Stop cleanly, with a last snapshot (the lease still holds meanwhile)."""
        await self._stop(partition, last_snapshot=True)

    async def _stop(self, p: int, *, last_snapshot: bool) -> None:
        starting = self._starting.pop(p, None)
        if starting is not None and not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        queries = self.queries.pop(p, None)
        if queries is not None:
            with contextlib.suppress(Exception):
                await queries.stop()
        keeper = self.keepers.pop(p, None)
        if keeper is not None:
            await keeper.stop(last_snapshot=last_snapshot)
            await keeper.store.close()

    # ----------------------------------------------------------------------- views

    def caught_up(self) -> bool:
        """True when every partition held here has recovered and follows the log."""
        return all(k.caught_up for k in self.keepers.values()) and len(self.queries) == len(
            self.keepers
        )
