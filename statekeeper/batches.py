"""Writing one persistence batch: public events, roster rows, snapshots, the checkpoint.

`BatchWriter.write` tries the batch whole. When the store or the events stream refuses it
(`persistence.is_refusal`), it writes everything but the refused items, records those as
set aside in the same transaction that moves the checkpoint, and reports them to the
`PersistenceHealth`. An outage is raised: the statekeeper keeps the batch and retries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from roomlog.seam import RoomLogPort
from statekeeper.leases import Fence
from statekeeper.outcomes import PublicEvent, RosterJoin, RosterLeave, RosterUpdate
from statekeeper.persistence import (
    Deletion,
    Item,
    PersistenceHealth,
    PoisonedItem,
    Snapshot,
    is_refusal,
    isolate,
)
from statekeeper.store import Store


class BatchWriter:
    """Writes the statekeeper's batches to the events stream and the store."""

    def __init__(
        self,
        room_log: RoomLogPort,
        store: Store,
        health: PersistenceHealth,
        clock: Callable[[], int],
        fence: Fence | None = None,
    ) -> None:
        self.room_log = room_log
        self.fence = fence
        self.store = store
        self.health = health
        self.clock = clock

    async def write(self, items: Sequence[Item], seq: int, with_checkpoint: bool) -> None:
        """Write a batch cut at log sequence `seq` (and the checkpoint there, when asked).

        The checkpoint never moves past an item that was neither written nor set aside.
        Raises on an outage; `items` must then be written again (every write is idempotent).
        """
        applied_seq = seq if with_checkpoint else None
        try:
            await self._write_items(items, applied_seq)
            return
        except Exception as exc:
            if not is_refusal(exc):
                raise
        refused = await isolate(items, lambda chunk: self._write_items(chunk, None))
        now = self.clock()
        records = [PoisonedItem.of(item, error, seq, now) for item, error in refused]
        await self.store.commit(roster=(), now_ms=now, poisoned=records, applied_seq=applied_seq)
        self.health.set_aside(records)

    async def _write_items(self, items: Sequence[Item], applied_seq: int | None) -> None:
        """Publish the public events among `items`, then commit the rest in one transaction
        (with the checkpoint at `applied_seq`, when given and anything else is written)."""
        public: list[PublicEvent] = []
        roster: list[RosterJoin | RosterLeave | RosterUpdate] = []
        snapshots: dict[str, tuple[int, bytes]] = {}
        deleted: dict[str, int] = {}
        for item in items:  # one pass: a join storm's batch is tens of thousands of items
            if isinstance(item, PublicEvent):
                public.append(item)
            elif isinstance(item, Snapshot):
                snapshots[item.room_id] = (item.seq, item.blob)
            elif isinstance(item, Deletion):
                deleted[item.room_id] = item.seq
            else:
                roster.append(item)
        if public:
            if self.fence is not None:
                self.fence.check()  # LeaseLost: an outage to the caller, nothing written
            await self.room_log.publish_event_batch(
                (p.room_id, p.name, p.message, p.message.id)  # type: ignore[attr-defined]
                for p in public
            )
        if roster or snapshots or deleted:
            await self.store.commit(
                roster=roster,
                now_ms=self.clock(),
                snapshots=snapshots,
                deleted_rooms=deleted,
                applied_seq=applied_seq,
            )


__all__ = ["BatchWriter"]
