"""The connection ledger (pure) and the limits' configuration."""

from __future__ import annotations

import pytest

from edge.admission import ConnectionLedger, Refusal
from edge.config import EdgeConfig, accept_backlog, default_max_connections, overflow_lane

A = "198.51.100.1"
B = "198.51.100.2"


def test_ledger_refuses_over_the_per_address_cap_but_admits_another_address() -> None:
    ledger = ConnectionLedger(max_connections=10, max_per_address=2, overflow=4)
    assert ledger.open((A, 1)) is None
    assert ledger.open((A, 2)) is None
    assert ledger.open((A, 3)) == Refusal("address", 2, held=True)
    assert ledger.open((B, 1)) is None
    assert (ledger.admitted, ledger.held) == (3, 1)


def test_ledger_refuses_over_the_edge_cap_whatever_the_address() -> None:
    ledger = ConnectionLedger(max_connections=2, max_per_address=2, overflow=4)
    assert ledger.open((A, 1)) is None
    assert ledger.open((B, 1)) is None
    refusal = ledger.open((B, 2))
    assert refusal == Refusal("edge", 2, held=True)
    assert "at most 2 connections" in refusal.message


def test_ledger_holds_refused_connections_only_while_the_overflow_lane_has_room() -> None:
    ledger = ConnectionLedger(max_connections=1, max_per_address=1, overflow=2)
    assert ledger.open((A, 1)) is None
    assert ledger.open((A, 2)) == Refusal("edge", 1, held=True)
    assert ledger.open((A, 3)) == Refusal("edge", 1, held=True)
    assert ledger.open((A, 4)) == Refusal("edge", 1, held=False)  # close at once
    ledger.close((A, 2))
    assert ledger.open((A, 5)) == Refusal("edge", 1, held=True)


def test_ledger_close_frees_the_slot_and_is_idempotent() -> None:
    ledger = ConnectionLedger(max_connections=5, max_per_address=1, overflow=1)
    assert ledger.open((A, 1)) is None
    ledger.close((A, 1))
    ledger.close((A, 1))
    ledger.close((B, 9))  # never opened
    assert ledger.open((A, 2)) is None
    assert (ledger.admitted, ledger.held) == (1, 0)


def test_default_connection_cap_leaves_headroom_below_the_descriptor_limit() -> None:
    for soft in (128, 1024, 20_000, 1 << 20):
        cap = default_max_connections(soft)
        burst = accept_backlog(cap, soft)
        assert cap >= 1 and 16 <= burst <= 2048
        assert cap + overflow_lane(cap) + burst + max(64, soft // 20) <= soft
    assert accept_backlog(default_max_connections(20_000), 20_000) == 2048  # uvicorn's default
    assert accept_backlog(100_000, 1024) == 16  # a cap above the limit: the smallest burst


def test_edge_config_computes_unset_limits_and_refuses_inconsistent_ones() -> None:
    config = EdgeConfig(nats_url="nats://x", api_key="k", api_secret="s")
    assert config.max_connections == default_max_connections()
    assert config.max_connections_per_address == config.max_connections
    with pytest.raises(ValueError, match="per_address"):
        EdgeConfig(
            nats_url="nats://x",
            api_key="k",
            api_secret="s",
            max_connections=3,
            max_connections_per_address=4,
        )
    for bad in ({"max_connections": -1}, {"join_deadline": 0}, {"http_read_timeout": -1.0}):
        with pytest.raises(ValueError):
            EdgeConfig(nats_url="nats://x", api_key="k", api_secret="s", **bad)
