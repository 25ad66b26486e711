"""The room log's shared retry budget: the pure token bucket, then a real nats-server whose
JetStream stops answering while many appends are in flight (docs/benchmarks.md, storm:
the retries that amplified the 100,000-viewer run's overload)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from nats.js import JetStreamContext

from processes.natsserver import NatsServer
from roomlog.jetstream import MSG_ID
from roomlog.log import RoomLog
from roomlog.retry import RetryBudget, RetryBudgetSpent, RetryPolicy
from schemas import subjects
from schemas.log import LeaveRequested

# --------------------------------------------------------------------------- the pure budget


def test_a_full_budget_grants_its_capacity_then_refuses() -> None:
    budget = RetryBudget(ratio=0.1, floor_per_s=0.0, capacity=3)
    assert [budget.try_retry(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert (budget.spent, budget.denied) == (3, 2)


def test_confirmed_appends_earn_their_fraction_of_a_retry() -> None:
    budget = RetryBudget(ratio=0.1, floor_per_s=0.0, capacity=2)
    while budget.try_retry(0.0):
        pass
    for _ in range(9):
        budget.succeeded(0.0)
    assert not budget.try_retry(0.0)  # 0.9 of a token
    budget.succeeded(0.0)
    assert budget.try_retry(0.0)  # the tenth success made it one


def test_the_floor_refills_with_time_and_never_beyond_the_capacity() -> None:
    budget = RetryBudget(ratio=0.0, floor_per_s=2.0, capacity=3)
    while budget.try_retry(10.0):
        pass
    assert not budget.try_retry(10.4)  # 0.8 of a token
    assert budget.try_retry(10.5)
    budget.try_retry(1000.0)  # a long quiet time fills it to the capacity, no more
    assert budget.tokens == pytest.approx(2.0)


def test_a_clock_going_backwards_earns_nothing() -> None:
    budget = RetryBudget(ratio=0.0, floor_per_s=1.0, capacity=1)
    assert budget.try_retry(5.0)
    assert not budget.try_retry(4.0)
    assert not budget.try_retry(5.5)
    assert budget.try_retry(6.0)


def test_a_reserved_token_is_spent_by_its_retry_or_given_back() -> None:
    budget = RetryBudget(ratio=0.0, floor_per_s=0.0, capacity=2)
    assert budget.reserve(0.0) and budget.reserve(0.0)
    assert not budget.reserve(0.0) and not budget.try_retry(0.0)  # both are held
    budget.release(used=False)  # its attempt needed no retry
    budget.release(used=True)
    assert (budget.tokens, budget.spent) == (1.0, 1)


@pytest.mark.parametrize(
    ("ratio", "floor_per_s", "capacity"),
    [(-0.1, 10.0, 100.0), (0.1, -1.0, 100.0), (0.1, 10.0, 0.5)],
)
def test_a_budget_out_of_range_is_refused(
    ratio: float, floor_per_s: float, capacity: float
) -> None:
    with pytest.raises(ValueError, match="retry budget"):
        RetryBudget(ratio=ratio, floor_per_s=floor_per_s, capacity=capacity)


# --------------------------------------------------------------------------- on JetStream


def leave(n: int) -> LeaveRequested:
    return LeaveRequested(room_id="budget-room", at=1_700_000_000_000 + n, sid=f"s{n}")


async def test_a_frozen_jetstream_gets_at_most_the_budgets_retries_and_loses_nothing_acked(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    """60 appends in flight while the server is stopped (SIGSTOP): only as many as the
    budget holds tokens for are sent with a short attempt and retried; the rest wait for
    their ack until the deadline, unsent again, and fail with the named error.
    Once the server runs again, the failed ones are appended again with their ids (what an
    edge's client does), and the stream holds every event exactly once, every
    acknowledged sequence holding the event it acknowledged."""
    budget = RetryBudget(ratio=0.1, floor_per_s=0.0, capacity=5)
    policy = RetryPolicy(deadline=2.0, first_backoff=0.05, max_backoff=0.2)
    room_log = RoomLog(js, ack_timeout=0.3, retry=policy, budget=budget)
    await room_log.ensure()
    acked = {n: await room_log.append(leave(n), f"m{n}") for n in range(10)}  # earns 1 token
    pid = nats_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        outcomes = await asyncio.gather(
            *(room_log.append(leave(n), f"m{n}") for n in range(10, 70)), return_exceptions=True
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    refused = [
        n for n, got in zip(range(10, 70), outcomes, strict=True) if isinstance(got, Exception)
    ]
    assert all(
        isinstance(got, (RetryBudgetSpent, TimeoutError))
        for got in outcomes
        if not isinstance(got, int)
    )
    assert sum(isinstance(got, RetryBudgetSpent) for got in outcomes) >= 60 - 6
    assert budget.spent <= 5 + 0.1 * 10  # the capacity plus what the 10 successes earned
    assert room_log.outages[subjects.LOG_STREAM].retries == budget.spent
    acked |= {
        n: got for n, got in zip(range(10, 70), outcomes, strict=True) if isinstance(got, int)
    }
    for n in refused:  # the clients' retries, with the same ids, once the server runs
        acked[n] = await room_log.append(leave(n), f"m{n}")
    assert sorted(acked) == list(range(70))
    assert len(set(acked.values())) == 70
    assert await room_log.last_seq() == 70  # each stored once: the ids deduplicated
    for n, seq in acked.items():
        stored = await js.get_msg(subjects.LOG_STREAM, seq)
        assert stored.headers is not None and stored.headers[MSG_ID] == f"m{n}"


async def test_with_the_budget_spent_an_append_waits_for_its_ack_instead_of_resending(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    """A slow stream's ack is late, not lost: with no retry to spare, an append's one
    attempt waits until its deadline, and lands without a retry."""
    budget = RetryBudget(ratio=0.0, floor_per_s=0.0, capacity=1)
    policy = RetryPolicy(deadline=5.0, first_backoff=0.05, max_backoff=0.2)
    room_log = RoomLog(js, ack_timeout=0.2, retry=policy, budget=budget)
    await room_log.ensure()
    assert budget.try_retry(0.0)  # spent
    pid = nats_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        append = asyncio.ensure_future(room_log.append(leave(1), "m1"))
        await asyncio.sleep(1.0)  # the stream is slow: five attempt timeouts long
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await append == 1
    assert (budget.spent, budget.denied) == (1, 0)
    assert room_log.outages[subjects.LOG_STREAM].retries == 0
