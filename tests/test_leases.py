"""The pure core of partition leases: shares, balance, lapse, fences."""

from __future__ import annotations

import pytest

from statekeeper.errors import LeaseLost
from statekeeper.leases import (
    Fence,
    LeaseTiming,
    Sightings,
    lease_key,
    member_key,
    plan,
    share,
)


def test_shares_split_partitions_evenly_and_cover_them_all() -> None:
    for n in range(1, 13):
        for k in range(1, 6):
            members = [f"sk-{i}" for i in range(k)]
            shares = [share(m, members, n) for m in members]
            assert sum(shares) == n
            assert max(shares) - min(shares) <= 1


def test_a_lone_statekeeper_takes_every_free_partition() -> None:
    holders: dict[int, str | None] = dict.fromkeys(range(4))
    assert plan("a", ["a"], holders).acquire == (0, 1, 2, 3)


def test_a_newcomer_takes_only_the_free_ones_up_to_its_share() -> None:
    holders: dict[int, str | None] = {0: "a", 1: "a", 2: None, 3: None, 4: "a", 5: None}
    assert plan("b", ["a", "b"], holders).acquire == (2, 3, 5)
    # 'a' holds 3 of 6 with two members: its share, nothing to do
    assert plan("a", ["a", "b"], holders) == plan("a", ["a", "b"], {**holders})


def test_an_overloaded_member_gives_back_one_a_round_from_the_top() -> None:
    holders: dict[int, str | None] = dict.fromkeys(range(8), "a")
    assert plan("a", ["a", "b"], holders).release == (7,)
    assert plan("a", ["a", "b"], holders, max_release=3).release == (7, 6, 5)
    assert plan("b", ["a", "b"], holders).acquire == ()  # nothing free yet


def test_a_dead_members_partitions_are_taken_once_they_lapse() -> None:
    seen = Sightings()
    seen.put(member_key("a"), "a", 1, now=0.0)
    seen.put(member_key("b"), "b", 2, now=0.0)
    seen.put(lease_key(0), "a", 3, now=0.0)
    seen.put(lease_key(1), "b", 4, now=0.0)
    seen.put(member_key("b"), "b", 5, now=1.5)  # b renews; a is silent
    seen.put(lease_key(1), "b", 6, now=1.5)
    assert seen.members(1.9, ttl=2.0) == ["a", "b"]
    assert seen.holders(2, 1.9, ttl=2.0) == {0: "a", 1: "b"}
    assert seen.members(2.0, ttl=2.0) == ["b"]
    holders = seen.holders(2, 2.0, ttl=2.0)
    assert holders == {0: None, 1: "b"}
    assert plan("b", seen.members(2.0, ttl=2.0), holders).acquire == (0,)
    # b was there before an observer that started at 0.0, and was seen renewing: a rival
    assert seen.rivals("c", ("member.",), started=0.0, now=2.0, ttl=2.0) == ["b"]
    assert seen.rivals("c", ("member.",), started=-1.0, now=2.0, ttl=2.0) == []  # came later
    assert seen.rivals("b", ("member.",), started=0.0, now=2.0, ttl=2.0) == []  # itself


def test_a_new_revision_restarts_the_lapse_clock_and_a_delete_frees() -> None:
    seen = Sightings()
    seen.put(lease_key(0), "a", 1, now=0.0)
    seen.put(lease_key(0), "a", 1, now=1.0)  # the same revision read again: no restart
    assert seen.holders(1, 2.0, ttl=2.0) == {0: None}
    seen.put(lease_key(0), "a", 9, now=2.5)
    assert seen.holders(1, 4.4, ttl=2.0) == {0: "a"}
    seen.gone(lease_key(0))
    assert seen.holders(1, 4.4, ttl=2.0) == {0: None}


def test_a_fence_stops_a_margin_before_any_observer_may_take_over() -> None:
    now = [10.0]
    timing = LeaseTiming(ttl=2.0, renew_every=0.4, margin=0.5)
    writes: list[tuple[int, str, int]] = []
    fence = Fence(
        3, "a", 42, deadline=10.0 + 1.5, clock=lambda: now[0], witness=lambda *w: writes.append(w)
    )
    fence.check()
    now[0] = 11.4
    fence.renewed(11.0, timing)  # sent at 11.0: holds until 12.5
    now[0] = 12.49
    fence.check()
    now[0] = 12.5
    with pytest.raises(LeaseLost) as lost:
        fence.check()
    assert (lost.value.partition, lost.value.revision) == (3, 42)
    assert writes == [(3, "a", 42), (3, "a", 42)]
    now[0] = 11.0
    fence.lose()
    assert not fence.holds()  # lost for good, whatever the clock says


def test_lease_timing_must_renew_well_inside_the_ttl() -> None:
    with pytest.raises(ValueError, match="renew_every"):
        LeaseTiming(ttl=2.0, renew_every=1.6, margin=0.5)
    with pytest.raises(ValueError):
        LeaseTiming(ttl=2.0, renew_every=0.4, margin=0.0)


def test_a_partition_whose_member_cannot_hold_it_is_taken_beyond_the_share() -> None:
    seen = Sightings()
    seen.put(lease_key(0), "a", 1, now=0.0)  # a announces itself but never renews it
    holders = seen.holders(2, 3.0, ttl=2.0)
    assert holders == {0: None, 1: None}
    assert seen.orphans(2, 3.0, ttl=2.0) == []  # lapsed once: a's turn first
    assert seen.orphans(2, 4.0, ttl=2.0) == [0]
    full = {0: None, 1: "b"}
    assert plan("b", ["a", "b"], full).acquire == ()
    assert plan("b", ["a", "b"], full, orphans=[0]).acquire == (0,)
