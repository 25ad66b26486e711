"""Join admission: an edge bounds the joins it has in flight and answers the rest at once
with `SERVER_BUSY` and a retry-after hint (the pure gate, then a real edge with a tiny cap
and many concurrent joins, raw and through the Python SDK)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

import stagecast
from edge.admission import CUT, PROBE_JOINS, JoinGate
from edge.metrics import sample_value
from schemas.client import Error, Join, JoinAccepted
from schemas.errors import ErrorCode
from stagecast.client import ConnectionState, ConnectOptions
from stagecast.client.session import honor_hint
from stagecast.errors import ServerBusy, Unavailable
from tests.edge_fixtures import Client, Stack, edge_stack

# --------------------------------------------------------------------------- the pure gate


def test_the_gate_admits_up_to_its_limit_and_frees_a_place_per_leave() -> None:
    gate = JoinGate(limit=2, max_wait=5.0, retry_after=0.25)
    first, second = gate.enter(0.0), gate.enter(0.0)
    assert first is not None and second is not None
    assert gate.enter(0.0) is None
    assert (gate.in_flight, gate.refused, gate.retry_after_ms) == (2, 1, 250)
    assert gate.why_busy() == "this edge has 2 joins in flight"
    gate.leave(first, 0.1)
    assert gate.enter(0.1) is not None


def fill(gate: JoinGate, now: float) -> list[int]:
    """Admit joins until the gate refuses one; their tickets."""
    tickets = []
    while (ticket := gate.enter(now)) is not None:
        tickets.append(ticket)
    return tickets


def test_slow_answers_narrow_the_window_once_per_max_wait_and_fast_ones_widen_it() -> None:
    gate = JoinGate(limit=1000, max_wait=2.0, retry_after=0.5)
    tickets = fill(gate, 0.0)
    assert len(tickets) == 1000
    for ticket in tickets[:500]:  # one slow batch: one cut
        gate.leave(ticket, 10.0)
    assert gate.window == 750
    for ticket in tickets[500:]:  # slow again, 2 s later: another
        gate.leave(ticket, 12.0)
    assert gate.window == 750 * CUT
    assert "joins at once now" in (gate.why_busy() or "x") or gate.in_flight < gate.window
    assert gate.retry_after_ms == 3000  # the recent latency, at most MAX_RETRY_AFTER
    admitted = fill(gate, 12.0)
    assert len(admitted) == int(750 * CUT)
    for ticket in admitted:  # answered in time, the window in use: it widens
        gate.leave(ticket, 12.5)
    assert gate.window > 750 * CUT


def test_the_window_never_closes_below_the_probes() -> None:
    gate = JoinGate(limit=1000, max_wait=1.0, retry_after=0.5)
    for n in range(100):  # slow answers, each a second apart: a cut each
        ticket = gate.enter(float(n))
        assert ticket is not None
        gate.leave(ticket, n + 5.0)
    assert gate.window == PROBE_JOINS
    assert len(fill(gate, 200.0)) == PROBE_JOINS


def test_the_gate_refuses_bad_limits_and_an_unknown_ticket() -> None:
    for limit, wait, after in ((0, 1.0, 1.0), (1, 0.0, 1.0), (1, 1.0, 0.0)):
        with pytest.raises(ValueError, match="join gate"):
            JoinGate(limit=limit, max_wait=wait, retry_after=after)
    gate = JoinGate(limit=1, max_wait=1.0, retry_after=1.0)
    with pytest.raises(RuntimeError, match="not in flight"):
        gate.leave(7, 0.0)


def test_the_sdk_waits_at_least_the_hint_with_jitter() -> None:
    busy = ServerBusy("busy")
    busy.retry_after = 0.5
    assert honor_hint(0.1, busy, 1.5) == pytest.approx(0.75)
    assert honor_hint(2.0, busy, 1.5) == 2.0  # the backoff is longer already
    assert honor_hint(0.1, Unavailable("down"), 1.5) == 0.1  # no hint
    assert honor_hint(0.1, None, 1.5) == 0.1


# --------------------------------------------------------------------------- a real edge

JOINERS = 30


async def joins_busy(stack: Stack) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{stack.url}/metrics")).text
    return sample_value(text, "stagecast_edge_joins_busy_total") or 0.0


async def join_until_admitted(client: Client, token: str) -> tuple[JoinAccepted, list[Error]]:
    """Send the join, and again on the same socket after each `SERVER_BUSY` hint."""
    busy: list[Error] = []
    while True:
        reply = await client.request(Join(id=client.next_id(), token=token))
        if isinstance(reply, JoinAccepted):
            return reply, busy
        assert isinstance(reply, Error) and reply.code == ErrorCode.SERVER_BUSY, reply
        busy.append(reply)
        await asyncio.sleep(reply.retry_after_ms / 1000)


async def test_joins_over_the_cap_are_told_to_wait_on_the_same_socket_and_all_get_in(
    tmp_path: Path,
) -> None:
    async with edge_stack(tmp_path, max_joins_in_flight=1, busy_retry_after=0.05) as stack:
        bystander = await stack.join("bystander")
        clients = [await stack.connect() for _ in range(JOINERS)]
        outcomes = await asyncio.gather(
            *(
                join_until_admitted(c, stack.token(None, viewer=True))
                for c in clients  # one token each: none is cached ahead of the others
            )
        )
        busy = [e for _, errors in outcomes for e in errors]
        assert busy, "no join was over the cap of 1 in flight"
        assert all(e.retry_after_ms == 50 and e.message for e in busy)
        assert await joins_busy(stack) == len(busy)
        assert len({joined.participant.id for joined, _ in outcomes}) == JOINERS
        await bystander.sync()  # the joined client was not disturbed
        assert not [f for f in bystander.seen if isinstance(f, Error)]


async def test_sdk_joins_over_the_cap_retry_with_the_hint_and_all_connect(
    tmp_path: Path,
) -> None:
    async with edge_stack(tmp_path, max_joins_in_flight=1, busy_retry_after=0.05) as stack:
        bystander = await stack.join("bystander")
        options = ConnectOptions(join_retry_window=30.0)
        rooms = await asyncio.gather(
            *(
                stagecast.join(stack.url, stack.token(f"sdk-{i}"), options=options)
                for i in range(JOINERS)
            )
        )
        try:
            assert await joins_busy(stack) > 0, "no SDK join was over the cap of 1 in flight"
            assert all(r.connection_state is ConnectionState.CONNECTED for r in rooms)
            await bystander.sync()
            assert not [f for f in bystander.seen if isinstance(f, Error)]
        finally:
            await asyncio.gather(*(r.leave() for r in rooms))


def test_the_browser_sdk_retries_server_busy_after_the_hint_with_jitter(tmp_path: Path) -> None:
    """session.js's join retry: `SERVER_BUSY` is retried, and waits the hint times the
    jitter (the hint comes from the error frame's `retry_after_ms`)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (>= 20) is not on PATH: install Node.js")
    static = Path(__file__).resolve().parent.parent / "edge" / "static"
    script = tmp_path / "busy.mjs"
    script.write_text(
        f"import {{ RETRYABLE, honorHint }} from {json.dumps((static / 'session.js').as_uri())};\n"
        f"import {{ StagecastError }} from {json.dumps((static / 'signaling.js').as_uri())};\n"
        "const busy = new StagecastError('SERVER_BUSY', 'busy', 500);\n"
        "process.stdout.write(JSON.stringify({\n"
        "  retryable: RETRYABLE.has('SERVER_BUSY'),\n"
        "  waited: honorHint(100, busy, 1.5),\n"
        "  longer: honorHint(2000, busy, 1.5),\n"
        "  unhinted: honorHint(100, new StagecastError('UNAVAILABLE'), 1.5),\n"
        "}));\n"
    )
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == {"retryable": True, "waited": 750, "longer": 2000, "unhinted": 100}
