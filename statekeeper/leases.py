"""Partition leases, the pure core: who should hold what, and when a lease still holds.

Statekeepers split the log's partitions through leases in a JetStream KV bucket
(`statekeeper.lease_bucket` is the shell). Each statekeeper announces itself under a
member key it rewrites every round; every lease key holds its owner and is rewritten by
its owner every round with compare-and-set on the key's revision.

No clock is shared between machines. Expiry is judged by each observer on its own
monotonic clock: a key whose revision has not changed for `ttl` since this observer first
saw that revision has lapsed. The holder, for its part, acts only while
``now < sent_at + ttl - margin`` where `sent_at` is taken *before* it sent the renewal
that succeeded; every observer saw that revision after it was written, so the holder
stops acting at least `margin` before anyone may take the partition over (`Fence`).

`plan` is the balance: with k live members, sorted by id, member i should hold
``N // k`` partitions, plus one when ``i < N % k``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping

from statekeeper.errors import LeaseLost

MEMBER_PREFIX = "member."
SOLO_PREFIX = "solo."
"""A statekeeper without leases (it folds every partition) announces itself under this."""
LEASE_PREFIX = "partition."


def lease_key(partition: int) -> str:
    """The KV key of one partition's lease."""
    return f"{LEASE_PREFIX}{partition}"


def member_key(owner: str) -> str:
    """The KV key a statekeeper announces itself under."""
    return f"{MEMBER_PREFIX}{owner}"


def solo_key(owner: str) -> str:
    """The KV key a statekeeper without leases announces itself under."""
    return f"{SOLO_PREFIX}{owner}"


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How long a lease lasts and how often it is renewed (seconds).

    Takeover after a crash takes about ``ttl + renew_every`` plus the restore."""

    ttl: float = 2.0
    renew_every: float = 0.4
    margin: float = 0.5
    """How long before an observer's expiry the holder stops acting."""

    def __post_init__(self) -> None:
        if not 0 < self.renew_every < self.ttl - self.margin or self.margin <= 0:
            raise ValueError(
                f"lease timing needs 0 < renew_every ({self.renew_every}) < ttl - margin "
                f"({self.ttl} - {self.margin}) and margin > 0"
            )


@dataclasses.dataclass(slots=True)
class Seen:
    """One KV key as an observer saw it: its value, revision, and since when (monotonic)."""

    value: str
    revision: int
    since: float
    moved: bool = False
    """The observer saw the key change (not only its first reading): its writer is alive."""
    first: float = 0.0
    """When the observer first saw the key at all (whatever its revision then)."""

    def lapsed(self, now: float, ttl: float) -> bool:
        """True when the revision has not moved for `ttl` on this observer's clock."""
        return now - self.since >= ttl


class Sightings:
    """What an observer has seen of the bucket: key -> `Seen`, with first-seen times."""

    def __init__(self) -> None:
        self.keys: dict[str, Seen] = {}

    def put(self, key: str, value: str, revision: int, now: float) -> None:
        """A key was written (or read) at `revision`; a new revision restarts its clock."""
        seen = self.keys.get(key)
        if seen is None:
            self.keys[key] = Seen(value, revision, now, first=now)
        elif seen.revision != revision:
            self.keys[key] = Seen(value, revision, now, moved=True, first=seen.first)

    def gone(self, key: str) -> None:
        """A key was deleted or purged."""
        self.keys.pop(key, None)

    def members(self, now: float, ttl: float) -> list[str]:
        """The members whose announcement has not lapsed, sorted."""
        return sorted(
            seen.value
            for key, seen in self.keys.items()
            if key.startswith(MEMBER_PREFIX) and not seen.lapsed(now, ttl)
        )

    def rivals(
        self, me: str, prefixes: tuple[str, ...], started: float, now: float, ttl: float
    ) -> list[str]:
        """Statekeepers under `prefixes` (not `me`) seen alive that were already there when
        this observer started at `started`: the one that came later is the one to refuse."""
        return sorted(
            seen.value
            for key, seen in self.keys.items()
            if key.startswith(prefixes)
            and seen.value != me
            and seen.moved
            and not seen.lapsed(now, ttl)
            and seen.first <= started
        )

    def orphans(self, partitions: int, now: float, ttl: float) -> list[int]:
        """Partitions whose lease lapsed twice over: their member, though announcing
        itself, cannot hold them (its renewals fail), so anyone may take them."""
        return [
            p
            for p in range(partitions)
            if (seen := self.keys.get(lease_key(p))) is not None and seen.lapsed(now, 2 * ttl)
        ]

    def holders(self, partitions: int, now: float, ttl: float) -> dict[int, str | None]:
        """Each partition's live holder, or None when its lease is free or lapsed."""
        held: dict[int, str | None] = {}
        for p in range(partitions):
            seen = self.keys.get(lease_key(p))
            held[p] = None if seen is None or seen.lapsed(now, ttl) else seen.value
        return held


def share(me: str, members: Iterable[str], partitions: int) -> int:
    """How many partitions `me` should hold among `members` (`me` counted in)."""
    everyone = sorted(set(members) | {me})
    k = len(everyone)
    i = everyone.index(me)
    return partitions // k + (1 if i < partitions % k else 0)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What one round should do: leases to take, and leases to give back."""

    acquire: tuple[int, ...] = ()
    release: tuple[int, ...] = ()


def plan(
    me: str,
    members: Iterable[str],
    holders: Mapping[int, str | None],
    *,
    orphans: Iterable[int] = (),
    max_release: int = 1,
) -> Plan:
    """Balance: take free partitions while below my share, give back my highest ones
    while above it (at most `max_release` a round, so views that differ for a moment
    move few leases).

    `holders` maps every partition to its live holder (None: free or lapsed)."""
    partitions = len(holders)
    target = share(me, members, partitions)
    mine = sorted(p for p, owner in holders.items() if owner == me)
    free = sorted(p for p, owner in holders.items() if owner is None)
    if len(mine) < target:
        return Plan(acquire=tuple(free[: target - len(mine)]))
    stranded = sorted(p for p in orphans if holders.get(p) is None)
    if stranded:
        return Plan(acquire=(stranded[0],))
    if len(mine) > target:
        extra = len(mine) - target
        return Plan(release=tuple(reversed(mine[-min(extra, max_release) :])))
    return Plan()


Witness = Callable[[int, str, int], None]
"""Told (partition, owner, revision) at every write a fence lets through (audits, tests)."""


@dataclasses.dataclass(slots=True)
class Fence:
    """The right to write for one partition, while the lease holds.

    `revision` is the KV revision the lease was acquired with (every later holder's is
    higher); SQL writes carry it (`partition_owners`) so the database refuses a stale
    holder's. `check` is called right before every write."""

    partition: int
    owner: str
    revision: int
    deadline: float
    """Monotonic time after which this holder must not act (see the module docstring)."""
    clock: Callable[[], float] = time.monotonic
    witness: Witness | None = None
    lost: bool = False

    def holds(self) -> bool:
        """True while the lease is held and its local deadline has not passed."""
        return not self.lost and self.clock() < self.deadline

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease holds; tell the witness of the write."""
        if not self.holds():
            raise LeaseLost(self.partition, self.revision)
        if self.witness is not None:
            self.witness(self.partition, self.owner, self.revision)

    def renewed(self, sent_at: float, timing: LeaseTiming) -> None:
        """A renewal sent at monotonic `sent_at` succeeded."""
        self.deadline = max(self.deadline, sent_at + timing.ttl - timing.margin)

    def lose(self) -> None:
        """The lease is gone (not renewed, taken, or given back); for good."""
        self.lost = True
