"""Partition leases, the shell: the KV bucket, a watcher of it, and the rounds that
announce this statekeeper, renew its leases, and take or give back partitions.

The decisions are `statekeeper.leases` (pure). This module only talks to JetStream KV:
``create`` (a free key), ``update(last=revision)`` (renewal, and taking over a lapsed
key: compare-and-set, so of two contenders one wins), ``delete(last=revision)`` (giving
back). What a partition's lease is *for* is the `Holder`'s business: `gain` starts
folding the partition, `lose` stops at once, `give_back` stops cleanly (a last snapshot,
while the lease still holds) before the key is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig

from roomlog.buckets import ensure_bucket
from schemas.subjects import LEASES_BUCKET
from statekeeper.errors import LeasesRequired, SeveralNeedPostgres
from statekeeper.leases import (
    MEMBER_PREFIX,
    SOLO_PREFIX,
    Fence,
    LeaseTiming,
    Sightings,
    Witness,
    lease_key,
    member_key,
    plan,
    solo_key,
)

log = logging.getLogger("stagecast.statekeeper.leases")

BUCKET = LEASES_BUCKET
GARBAGE_AGE_S = 300.0
"""Keys not rewritten for this long vanish (announcements of statekeepers long gone)."""
STOP_WAIT_S = 2.0
"""How long a stop waits on one bucket call (a lease not deleted lapses anyway)."""
_RELEASING = "~releasing~"
_CAS_FAILED = (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError)
"""The key moved (or went) since the revision we hold: someone else wrote it. Any other
error (JetStream unavailable for a moment, a timeout) is left to the deadline."""


class Holder(Protocol):
    """What holds the partitions this statekeeper leases (`statekeeper.partitions`)."""

    async def gain(self, fence: Fence) -> None:
        """Start folding `fence.partition` (recovery may go on in the background)."""
        ...

    async def lose(self, partition: int) -> None:
        """Stop acting for `partition` at once, writing nothing more."""
        ...

    async def give_back(self, partition: int) -> None:
        """Stop cleanly (the fence still holds meanwhile), then the lease is deleted."""
        ...


def new_owner_id() -> str:
    """A statekeeper's id in the bucket: new for every process (a restart is a newcomer)."""
    return f"sk-{uuid.uuid4().hex[:12]}"


async def open_bucket(js: Any, *, replicas: int = 1) -> Any:
    """The leases bucket, created when missing, with at least `replicas` replicas (raised,
    never lowered: `roomlog.buckets.ensure_bucket`)."""
    config = KeyValueConfig(bucket=BUCKET, history=1, ttl=GARBAGE_AGE_S, replicas=replicas)
    return await ensure_bucket(js, config)


class BucketView:
    """The leases bucket as this process has watched it: `Sightings`, kept current."""

    def __init__(self, kv: Any, clock: Callable[[], float], retry_s: float) -> None:
        self.kv = kv
        self.clock = clock
        self.retry_s = retry_s
        self.sightings = Sightings()
        self.started = 0.0
        """When the bucket's contents at start had all been read (monotonic)."""
        self._ready = asyncio.Event()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Watch the bucket; return once what it held at start has been read."""
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._watch())
        try:
            await asyncio.wait_for(self._ready.wait(), 10)
        except TimeoutError:
            log.warning("the leases bucket was not read whole in 10 s; going on")
        self.started = self.clock()

    async def stop(self) -> None:
        """Stop watching. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # bounded: shutdown never waits on it
                await asyncio.wait_for(self._watcher.stop(), STOP_WAIT_S)
            self._watcher = None

    async def _watch(self) -> None:
        while True:
            try:
                async for entry in self._watcher:
                    if entry is None:
                        self._ready.set()
                    elif entry.operation in ("DEL", "PURGE") or entry.value is None:
                        self.sightings.gone(entry.key)
                    else:
                        value = entry.value.decode()
                        self.sightings.put(entry.key, value, entry.revision, self.clock())
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the leases watcher failed; watching again")
                await asyncio.sleep(self.retry_s)
                with contextlib.suppress(Exception):
                    self._watcher = await self.kv.watchall()


class Leasing:
    """Rounds every `timing.renew_every`: announce, renew, balance. One per process."""

    def __init__(
        self,
        kv: Any,
        holder: Holder,
        *,
        partitions: int,
        owner: str | None = None,
        timing: LeaseTiming | None = None,
        single: bool = False,
        witness: Witness | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.holder = holder
        self.partitions = partitions
        self.owner = owner or new_owner_id()
        self.timing = timing or LeaseTiming()
        self.single = single
        """SQLite: refuse to run beside another statekeeper (`SeveralNeedPostgres`)."""
        self.witness = witness
        self.clock = clock
        self.view = BucketView(kv, clock, self.timing.renew_every)
        self.sightings = self.view.sightings
        self.fences: dict[int, Fence] = {}
        self._revisions: dict[int, int] = {}
        self._releasing: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.failed: BaseException | None = None
        """Why the rounds ended early (`SeveralNeedPostgres`, `LeasesRequired`), if so."""
        self.stopped = asyncio.Event()

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Watch the bucket, announce this statekeeper, and start the rounds."""
        await self.view.start()
        await self._announce()
        self._tasks.append(asyncio.create_task(self._rounds()))

    async def stop(self) -> None:
        """Give every partition back cleanly (renewing meanwhile), then leave. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for p in list(self.fences):
            if p not in self._releasing:
                self._releasing[p] = asyncio.create_task(self.holder.give_back(p))
        if self._releasing:
            await asyncio.wait(list(self._releasing.values()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in list(self.fences):
            await self._delete(p)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.kv.delete(member_key(self.owner)), STOP_WAIT_S)
        await self.view.stop()
        self.stopped.set()

    def held(self) -> list[int]:
        """The partitions whose lease this statekeeper holds now."""
        return sorted(p for p, fence in self.fences.items() if fence.holds())

    async def _announce(self) -> None:
        await self.kv.put(member_key(self.owner), self.owner.encode())

    # ----------------------------------------------------------------------- rounds

    async def _rounds(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except (SeveralNeedPostgres, LeasesRequired) as exc:
                log.error("%s", exc)
                self.failed = exc
                self.stopped.set()
                return
            except Exception:
                log.exception("a lease round failed")
            elapsed = self.clock() - started
            await asyncio.sleep(max(0.0, self.timing.renew_every - elapsed))

    async def round(self) -> None:
        """One round: announce, renew held leases, drop lost ones, then balance (not in
        the first TTL after start: by then every live statekeeper has been seen renewing,
        so a newcomer neither takes what it would give back nor runs beside a rival)."""
        with contextlib.suppress(nats.errors.Error):
            await self._announce()
        for p in list(self.fences):
            await self._renew(p)
        for p, task in list(self._releasing.items()):
            if task.done() and not self._closing:
                del self._releasing[p]
                await self._delete(p)
        if self._closing:
            return
        now = self.clock()
        members = self.sightings.members(now, self.timing.ttl)
        prefixes = (MEMBER_PREFIX, SOLO_PREFIX) if self.single else (SOLO_PREFIX,)
        rivals = self.sightings.rivals(
            self.owner, prefixes, self.view.started, now, self.timing.ttl
        )
        if rivals:
            raise SeveralNeedPostgres(len(rivals) + 1) if self.single else LeasesRequired(rivals)
        if now - self.view.started < self.timing.ttl:
            return  # settling: who else is alive shows only as their keys move
        holders = self.sightings.holders(self.partitions, now, self.timing.ttl)
        for p in range(self.partitions):
            if p in self._releasing:
                holders[p] = _RELEASING
            elif p in self.fences:
                holders[p] = self.owner
            elif holders[p] == self.owner:
                holders[p] = None  # a lease of ours we no longer count on: take it again
        orphans = self.sightings.orphans(self.partitions, now, self.timing.ttl)
        todo = plan(self.owner, members, holders, orphans=orphans)
        for p in todo.acquire:
            await self._acquire(p)
        for p in todo.release:
            log.info("giving partition %d back (balance)", p)
            self._releasing[p] = asyncio.create_task(self.holder.give_back(p))

    async def _renew(self, p: int) -> None:
        fence = self.fences[p]
        if not fence.holds():
            await self._lost(p, "not renewed before its deadline")
            return
        sent = self.clock()
        try:
            revision = await self.kv.update(
                lease_key(p), self.owner.encode(), last=self._revisions[p]
            )
        except _CAS_FAILED:
            await self._lost(p, "taken by another statekeeper")
            return
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("lease on partition %d not renewed (%r); its deadline will tell", p, exc)
            return
        self._revisions[p] = revision
        fence.renewed(sent, self.timing)

    async def _acquire(self, p: int) -> None:
        key = lease_key(p)
        seen = self.sightings.keys.get(key)
        sent = self.clock()
        try:
            if seen is None:
                revision = await self.kv.create(key, self.owner.encode())
            else:  # lapsed on our clock: take it over only if nobody renewed meanwhile
                revision = await self.kv.update(key, self.owner.encode(), last=seen.revision)
        except _CAS_FAILED:
            return  # another statekeeper was faster, or our view is behind
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("lease on partition %d not taken (%r)", p, exc)
            return
        fence = Fence(
            partition=p,
            owner=self.owner,
            revision=revision,
            deadline=sent + self.timing.ttl - self.timing.margin,
            clock=self.clock,
            witness=self.witness,
        )
        self.fences[p] = fence
        self._revisions[p] = revision
        log.info("partition %d leased at revision %d", p, revision)
        await self.holder.gain(fence)

    async def _lost(self, p: int, why: str) -> None:
        fence = self.fences.pop(p)
        self._revisions.pop(p, None)
        fence.lose()
        task = self._releasing.pop(p, None)
        if task is not None:
            task.cancel()
        log.warning("lease on partition %d lost: %s", p, why)
        await self.holder.lose(p)

    async def _delete(self, p: int) -> None:
        fence = self.fences.pop(p, None)
        revision = self._revisions.pop(p, None)
        if fence is not None:
            fence.lose()
        if revision is None:
            return
        try:
            await asyncio.wait_for(self.kv.delete(lease_key(p), last=revision), STOP_WAIT_S)
        except Exception as exc:  # it lapses anyway
            log.warning("lease on partition %d not deleted (%r); it will lapse", p, exc)


class SoloGuard:
    """A statekeeper without leases (it folds every partition) announces itself in the
    bucket, and refuses to go on when another statekeeper was running on this NATS first:
    `SeveralNeedPostgres` on SQLite, `LeasesRequired` otherwise (`failed`, `stopped`)."""

    def __init__(
        self,
        kv: Any,
        *,
        sqlite: bool,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.sqlite = sqlite
        self.owner = new_owner_id()
        self.timing = timing or LeaseTiming()
        self.clock = clock
        self.view = BucketView(kv, clock, self.timing.renew_every)
        self.failed: BaseException | None = None
        self.stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the bucket, announce this statekeeper, and keep announcing it."""
        await self.view.start()
        await self.kv.put(solo_key(self.owner), self.owner.encode())
        self._task = asyncio.create_task(self._rounds())

    async def stop(self) -> None:
        """Stop announcing and withdraw. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kv.delete(solo_key(self.owner)), STOP_WAIT_S)
        await self.view.stop()

    async def _rounds(self) -> None:
        while True:
            await asyncio.sleep(self.timing.renew_every)
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await self.kv.put(solo_key(self.owner), self.owner.encode())
            rivals = self.view.sightings.rivals(
                self.owner,
                (MEMBER_PREFIX, SOLO_PREFIX),
                self.view.started,
                self.clock(),
                self.timing.ttl,
            )
            if rivals:
                self.failed = (
                    SeveralNeedPostgres(len(rivals) + 1) if self.sqlite else LeasesRequired(rivals)
                )
                log.error("%s", self.failed)
                self.stopped.set()
                return
