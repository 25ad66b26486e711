"""Upgrade admission: while an edge is behind (its loop ran late, or too many sockets wait
to join) a ``/rtc`` upgrade is answered 503 ``SERVER_BUSY`` with ``Retry-After``, before any
socket or session exists (the pure gate, then a real edge pushed behind by a tiny bound or
a blocked loop, raw and through the Python SDK)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import stagecast
from edge.admission import MAX_RETRY_AFTER, UpgradeGate
from edge.config import EdgeConfig
from edge.looplag import LoopLag
from edge.metrics import sample_value
from schemas.client import Error
from stagecast.client import ConnectionState, ConnectOptions
from stagecast.client.connection import RETRY_AFTER_MS_HEADER
from stagecast.errors import ServerBusy
from tests.edge_fixtures import Client, Stack, edge_stack

# --------------------------------------------------------------------------- the pure gate


def test_the_gate_refuses_past_either_bound_with_a_hint_that_grows_with_the_lag() -> None:
    gate = UpgradeGate(max_lag=1.0, max_unjoined=3, retry_after=0.5)
    assert gate.check(lag=0.2, unjoined=2) is None
    unjoined = gate.check(lag=0.2, unjoined=3)
    assert unjoined is not None
    assert (unjoined.reason, unjoined.retry_after_ms) == ("unjoined", 500)
    assert unjoined.message == "this edge has 3 sockets waiting to join"
    lagging = gate.check(lag=1.5, unjoined=0)
    assert lagging is not None
    assert (lagging.reason, lagging.retry_after_ms) == ("loop_lag", 1500)
    far_behind = gate.check(lag=9.0, unjoined=0)
    assert far_behind is not None and far_behind.retry_after == MAX_RETRY_AFTER
    assert gate.refused == {"unjoined": 1, "loop_lag": 2}
    assert gate.check(lag=0.0, unjoined=0) is None  # the bound lifts


def test_the_gate_and_the_edge_config_refuse_bad_bounds() -> None:
    for lag, unjoined, after in ((0.0, 1, 1.0), (1.0, 0, 1.0), (1.0, 1, 0.0)):
        with pytest.raises(ValueError, match="upgrade gate"):
            UpgradeGate(lag, unjoined, after)
    with pytest.raises(ValueError, match="max_unjoined_sockets"):
        EdgeConfig(nats_url="nats://x", api_key="k", api_secret="s", max_unjoined_sockets=0)


def test_recent_lag_looks_back_only_over_its_span() -> None:
    lag = LoopLag(window=20.0)
    lag.record(10.0, 2.0)
    lag.record(10.5, 0.1)
    assert lag.recent(10.6, 1.0) == 2.0
    assert lag.recent(11.2, 1.0) == 0.1  # the 2 s delay is older than the span
    assert lag.recent(12.0, 1.0) == 0.0
    assert lag.stalled(12.0) == pytest.approx(2.1)  # the liveness window still has both


# --------------------------------------------------------------------------- a real edge


async def refused(stack: Stack) -> dict[str, float]:
    """The edge's `stagecast_edge_upgrades_refused_total`, by reason."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{stack.url}/metrics")).text
    return {
        reason: sample_value(text, "stagecast_edge_upgrades_refused_total", reason=reason) or 0.0
        for reason in ("loop_lag", "unjoined")
    }


async def refused_upgrade(stack: Stack) -> InvalidStatus:
    """Open a socket that must be refused; the refusal."""
    with pytest.raises(InvalidStatus) as raised:
        async with connect(stack.ws_url):
            pass
    return raised.value


async def no_errors(client: Client) -> None:
    await client.sync()
    assert not [f for f in client.seen if isinstance(f, Error)]


async def test_upgrades_past_the_unjoined_bound_get_503_and_the_sdk_gets_in_once_it_clears(
    tmp_path: Path,
) -> None:
    async with edge_stack(tmp_path, max_unjoined_sockets=2, upgrade_retry_after=0.05) as stack:
        bystander = await stack.join("bystander")  # joined: not waiting to join
        waiting = [await stack.connect() for _ in range(2)]
        for client in waiting:
            await client.sync()  # upgraded, no join sent
        status = (await refused_upgrade(stack)).response
        assert status.status_code == 503
        assert status.headers["retry-after"] == "1"  # whole seconds, rounded up
        assert status.headers[RETRY_AFTER_MS_HEADER] == "50"
        assert bytes(status.body or b"").startswith(b"SERVER_BUSY: this edge has 2 sockets")
        assert (await refused(stack))["unjoined"] == 1

        options = ConnectOptions(join_retry_window=60.0)
        joining = asyncio.create_task(
            stagecast.join(stack.url, stack.token("sdk"), options=options)
        )
        while (await refused(stack))["unjoined"] < 3 and not joining.done():
            await asyncio.sleep(0.05)  # the SDK was refused too, and waits
        assert not joining.done()
        await waiting[0].close()  # the bound lifts
        room = await asyncio.wait_for(joining, 60.0)
        try:
            assert room.connection_state is ConnectionState.CONNECTED
            await no_errors(bystander)
            await no_errors(waiting[1])
        finally:
            await room.leave()


async def test_the_sdk_raises_server_busy_when_its_retry_window_is_spent(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, max_unjoined_sockets=1, upgrade_retry_after=0.05) as stack:
        holder = await stack.connect()
        await holder.sync()
        options = ConnectOptions(join_retry_window=0.5)
        with pytest.raises(ServerBusy, match="sockets waiting to join") as raised:
            await stagecast.join(stack.url, stack.token("sdk"), options=options)
        assert raised.value.retry_after == pytest.approx(0.05)


async def test_upgrades_while_the_loop_runs_late_get_503_and_the_bound_lifts(
    tmp_path: Path,
) -> None:
    async with edge_stack(tmp_path, max_upgrade_lag=0.3, upgrade_retry_after=0.05) as stack:
        bystander = await stack.join("bystander")
        # The edge runs in this loop: blocking it is the edge running behind.
        time.sleep(1.0)  # noqa: ASYNC251
        status = (await refused_upgrade(stack)).response
        assert status.status_code == 503
        assert bytes(status.body or b"").startswith(b"SERVER_BUSY: this edge runs")
        assert int(status.headers[RETRY_AFTER_MS_HEADER]) >= 300  # the lag, not the 50 ms
        assert (await refused(stack))["loop_lag"] >= 1
        options = ConnectOptions(join_retry_window=60.0)
        room = await stagecast.join(stack.url, stack.token("sdk"), options=options)
        try:
            assert room.connection_state is ConnectionState.CONNECTED
            await no_errors(bystander)
        finally:
            await room.leave()
