"""RPC between participants end to end: a real nats-server, statekeeper and edge, SDK clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.streams import RPC_PAYLOAD_BYTES
from stagecast.client import Room, RpcInvocationData
from stagecast.errors import RpcError
from tests.stack_fixtures import Stack, sdk_stack

pytestmark = pytest.mark.timeout(60)

ROOM = "rpc"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path) as running:
        yield running


async def pair(stack: Stack) -> tuple[Room, Room]:
    caller = await stack.join(stack.token("caller", ROOM))
    callee = await stack.join(stack.token("callee", ROOM))
    for _ in range(200):  # the caller must know the callee before it may call it
        if "callee" in caller.remote_participants:
            break
        await asyncio.sleep(0.05)
    assert "callee" in caller.remote_participants
    return caller, callee


async def test_round_trip_with_a_decorated_handler(stack: Stack) -> None:
    caller, callee = await pair(stack)
    seen: list[RpcInvocationData] = []

    @callee.local_participant.register_rpc_method("greet")
    async def greet(data: RpcInvocationData) -> str:
        seen.append(data)
        return json.dumps({"hello": json.loads(data.payload)["name"]})

    answer = await caller.local_participant.perform_rpc(
        destination_id="callee", method="greet", payload='{"name": "Zoë"}', response_timeout=5
    )
    assert json.loads(answer) == {"hello": "Zoë"}
    assert [(d.caller_id, d.response_timeout) for d in seen] == [("caller", 5.0)]

    # a plain (sync) handler, registered without the decorator, with a payload at the limit
    callee.local_participant.register_rpc_method("echo", lambda data: data.payload)
    big = "é" * (RPC_PAYLOAD_BYTES // 2)
    assert (
        await caller.local_participant.perform_rpc(
            destination_id="callee", method="echo", payload=big
        )
        == big
    )


async def test_unknown_method_is_unsupported(stack: Stack) -> None:
    caller, _callee = await pair(stack)
    with pytest.raises(RpcError) as caught:
        await caller.local_participant.perform_rpc(destination_id="callee", method="nope")
    assert caught.value.code == RpcError.UNSUPPORTED_METHOD == 1400


async def test_handler_exception_reaches_the_caller_as_an_application_error(
    stack: Stack,
) -> None:
    caller, callee = await pair(stack)

    def broken(data: RpcInvocationData) -> str:
        raise ValueError("the model is offline")

    def picky(data: RpcInvocationData) -> str:
        raise RpcError(4001, "bad order", data='{"field": "size"}')

    callee.local_participant.register_rpc_method("broken", broken)
    callee.local_participant.register_rpc_method("picky", picky)
    with pytest.raises(RpcError) as caught:
        await caller.local_participant.perform_rpc(destination_id="callee", method="broken")
    assert caught.value.code == RpcError.APPLICATION_ERROR == 1500
    assert "the model is offline" in caught.value.message
    with pytest.raises(RpcError) as custom:
        await caller.local_participant.perform_rpc(destination_id="callee", method="picky")
    assert (custom.value.code, custom.value.message, custom.value.data) == (
        4001,
        "bad order",
        '{"field": "size"}',
    )


async def test_a_slow_handler_times_out(stack: Stack) -> None:
    caller, callee = await pair(stack)
    release = asyncio.Event()

    async def slow(data: RpcInvocationData) -> str:
        await release.wait()
        return "late"

    callee.local_participant.register_rpc_method("slow", slow)
    try:
        with pytest.raises(RpcError) as caught:
            await caller.local_participant.perform_rpc(
                destination_id="callee", method="slow", response_timeout=1.0
            )
        assert caught.value.code == RpcError.RESPONSE_TIMEOUT == 1502
    finally:
        release.set()


async def test_recipient_leaving_mid_call_fails_the_call(stack: Stack) -> None:
    caller, callee = await pair(stack)
    started = asyncio.Event()

    async def forever(data: RpcInvocationData) -> str:
        started.set()
        await asyncio.Event().wait()
        return ""

    callee.local_participant.register_rpc_method("forever", forever)
    call = asyncio.create_task(
        caller.local_participant.perform_rpc(
            destination_id="callee", method="forever", response_timeout=30
        )
    )
    await asyncio.wait_for(started.wait(), 15)
    await callee.leave()
    with pytest.raises(RpcError) as caught:
        await asyncio.wait_for(call, 15)
    assert caught.value.code == RpcError.RECIPIENT_DISCONNECTED == 1503


async def test_unknown_recipient_and_oversize_payloads_are_refused(stack: Stack) -> None:
    caller, callee = await pair(stack)
    with pytest.raises(RpcError) as missing:
        await caller.local_participant.perform_rpc(destination_id="nobody", method="x")
    assert missing.value.code == RpcError.RECIPIENT_NOT_FOUND == 1401
    with pytest.raises(RpcError) as big:
        await caller.local_participant.perform_rpc(
            destination_id="callee", method="x", payload="x" * (RPC_PAYLOAD_BYTES + 1)
        )
    assert big.value.code == RpcError.REQUEST_PAYLOAD_TOO_LARGE == 1402
    callee.local_participant.register_rpc_method("huge", lambda d: "y" * (RPC_PAYLOAD_BYTES + 1))
    with pytest.raises(RpcError) as huge:
        await caller.local_participant.perform_rpc(destination_id="callee", method="huge")
    assert huge.value.code == RpcError.RESPONSE_PAYLOAD_TOO_LARGE == 1504


async def test_a_call_to_a_participant_that_never_acknowledges_is_a_connection_timeout(
    stack: Stack,
) -> None:
    caller, callee = await pair(stack)
    callee._rpc.on_message = lambda sender_id, message: None  # type: ignore[method-assign]
    with pytest.raises(RpcError) as caught:
        await caller.local_participant.perform_rpc(
            destination_id="callee", method="x", response_timeout=1.5
        )
    assert caught.value.code == RpcError.CONNECTION_TIMEOUT == 1501
