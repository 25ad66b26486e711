"""What an append retries (`roomlog.retry.transient`), and the outage log lines."""

from __future__ import annotations

import logging
import time

import nats.errors
import nats.js.errors
import pytest

from roomlog.retry import RetryPolicy, WriteOutage, pause, transient


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.TimeoutError(),  # no ack: the leader died with the append in flight
        nats.js.errors.NoStreamResponseError(),  # 503: no leader to take it (yet)
        nats.js.errors.ServiceUnavailableError(code=503, description="unavailable"),
        nats.js.errors.APIError(code=500, err_code=10008, description="temporarily unavailable"),
        nats.errors.OutboundBufferLimitError(),  # reconnecting to another node
        nats.errors.ConnectionReconnectingError(),
        nats.errors.UnexpectedEOF(),
        ConnectionResetError(),
    ],
)
def test_an_election_or_a_reconnect_is_retried(exc: BaseException) -> None:
    assert transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        nats.js.errors.APIError(code=400, err_code=10054, description="message size exceeds"),
        nats.js.errors.APIError(code=400, err_code=10071, description="wrong last sequence"),
        nats.js.errors.NotFoundError(code=404, err_code=10059, description="stream not found"),
        nats.errors.ConnectionClosedError(),
        nats.errors.ConnectionDrainingError(),
        nats.errors.BadSubjectError(),
        ValueError("a bug"),
    ],
)
def test_a_refusal_or_a_closed_client_is_not_retried(exc: BaseException) -> None:
    assert not transient(exc)


def test_a_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(deadline=-1)
    with pytest.raises(ValueError):
        RetryPolicy(first_backoff=0)
    with pytest.raises(ValueError):
        RetryPolicy(first_backoff=1.0, max_backoff=0.5)


def test_an_outage_is_two_log_lines_however_many_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stagecast.roomlog")
    outage = WriteOutage("STAGECAST_LOG")
    before = time.monotonic()
    outage.succeeded(before)  # no outage: nothing to say
    for _ in range(50):
        outage.failed(nats.js.errors.NoStreamResponseError())
    outage.succeeded(before)  # an ack for an attempt made before the outage: still failing
    assert outage.failing_since is not None
    outage.succeeded(time.monotonic())
    outage.failed(nats.errors.TimeoutError())
    outage.succeeded(time.monotonic())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("appends to STAGECAST_LOG failing (NoStreamResponseError")
    assert lines[1].startswith("appends to STAGECAST_LOG work again after")
    assert lines[1].endswith("(50 retries)")
    assert lines[3].endswith("(1 retries)")
    assert (outage.outages, outage.retries) == (2, 51)
    assert outage.failing_since is None


async def test_pause_stops_at_the_deadline() -> None:
    policy = RetryPolicy(deadline=0.2, first_backoff=0.05, max_backoff=0.1)
    end = time.monotonic() + policy.deadline
    pauses = 0
    while await pause(pauses, policy, end):
        pauses += 1
        assert pauses < 50, "pause never said the deadline passed"
    assert time.monotonic() >= end  # False only once the deadline has passed
