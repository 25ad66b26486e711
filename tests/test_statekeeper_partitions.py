"""`PartitionHost`: a partition whose recovery cannot start yet is started again."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import nats.errors
import pytest

from statekeeper import partitions
from statekeeper.leases import Fence


class _FailingOnceKeeper:
    """Stands in for a `Statekeeper` whose first start times out (a NATS election)."""

    made: ClassVar[list[_FailingOnceKeeper]] = []

    def __init__(self, nc: object, room_log: object, store: _ScopedStore, **_: object) -> None:
        self.store = store
        self.applied_seq = 0
        self.stopped = False
        _FailingOnceKeeper.made.append(self)

    async def start(self) -> None:
        if len(_FailingOnceKeeper.made) == 1:
            raise nats.errors.TimeoutError

    async def wait_caught_up(self) -> None:
        return None

    async def stop(self, last_snapshot: bool) -> None:
        self.stopped = True


class _ScopedStore:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class _Store:
    def scoped(self, partition: int, fence: Fence) -> _ScopedStore:
        return _ScopedStore()


class _Queries:
    def __init__(self, keeper: _FailingOnceKeeper, *_: object, **__: object) -> None:
        self.keeper = keeper

    async def start(self) -> None:
        return None


async def test_a_partition_whose_start_fails_is_started_again_while_the_lease_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partitions, "Statekeeper", _FailingOnceKeeper)
    monkeypatch.setattr(partitions, "Queries", _Queries)
    monkeypatch.setattr(partitions, "START_RETRY_S", 0.01)
    _FailingOnceKeeper.made.clear()
    host = partitions.PartitionHost(
        object(),  # type: ignore[arg-type]
        object(),  # type: ignore[arg-type]
        _Store(),  # type: ignore[arg-type]
        cursor_secret=b"s",
    )
    fence = Fence(partition=3, owner="sk-a", revision=7, deadline=time.monotonic() + 60)
    await host.gain(fence)
    await asyncio.wait_for(host._starting[3], 5)
    first, second = _FailingOnceKeeper.made
    assert first.stopped and first.store.closed  # the failed one is dropped, nothing leaks
    assert host.keepers[3] is second  # type: ignore[comparison-overlap]
    assert 3 in host.queries  # and the partition is served
