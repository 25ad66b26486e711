"""RPC between participants end to end: a real nats-server, statekeeper and edge, SDK clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.models import CARRIED_DATA_BYTES, DATA_BYTES
from schemas.streams import RPC_PAYLOAD_BYTES, RPC_TOPIC
from stagecast.client import Room, RpcInvocationData
from stagecast.errors import PayloadTooLarge, RpcError
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


async def test_an_unknown_recipient_is_refused(stack: Stack) -> None:
    caller, _callee = await pair(stack)
    with pytest.raises(RpcError) as missing:
        await caller.local_participant.perform_rpc(destination_id="nobody", method="x")
    assert missing.value.code == RpcError.RECIPIENT_NOT_FOUND == 1401


async def test_payloads_of_exactly_15_kib_pass_and_one_byte_more_is_refused(stack: Stack) -> None:
    """LiveKit's promise: 15,360 bytes of UTF-8 each way, through a real edge (the reserved
    topic's envelope room); one byte more is 1402 for a request, 1504 for a response."""
    assert RPC_PAYLOAD_BYTES == 15_360
    caller, callee = await pair(stack)
    full = "é" * 7_679 + "xx"  # multi-byte: the limit counts UTF-8 bytes, not characters
    assert len(full.encode()) == 15_360
    callee.local_participant.register_rpc_method("echo", lambda d: d.payload)
    callee.local_participant.register_rpc_method("full", lambda d: "y" * 15_360)
    callee.local_participant.register_rpc_method("over", lambda d: "y" * 15_361)
    # a long method name takes envelope room too
    method = "m" * 256
    callee.local_participant.register_rpc_method(method, lambda d: d.payload)
    rpc = caller.local_participant.perform_rpc
    assert await rpc(destination_id="callee", method="echo", payload=full) == full
    assert await rpc(destination_id="callee", method=method, payload=full) == full
    assert await rpc(destination_id="callee", method="full") == "y" * 15_360
    with pytest.raises(RpcError) as big:
        await rpc(destination_id="callee", method="echo", payload=full + "x")
    assert big.value.code == RpcError.REQUEST_PAYLOAD_TOO_LARGE == 1402
    with pytest.raises(RpcError) as huge:
        await rpc(destination_id="callee", method="over")
    assert huge.value.code == RpcError.RESPONSE_PAYLOAD_TOO_LARGE == 1504
    assert "15360" in huge.value.message


async def test_ordinary_data_keeps_its_15_kib_limit_beside_the_rpc_topic(stack: Stack) -> None:
    """The envelope room is the reserved topics' only: other data over 15 KiB is refused by
    the edge with PAYLOAD_TOO_LARGE, and so is a reserved topic's payload past its room."""
    caller, _callee = await pair(stack)
    publish = caller.local_participant.publish_data
    await publish(b"x" * DATA_BYTES, topic="chat")
    for topic, size in (("chat", DATA_BYTES + 1), (None, DATA_BYTES + 1)):
        with pytest.raises(PayloadTooLarge):
            await publish(b"x" * size, topic=topic)
    with pytest.raises(PayloadTooLarge):
        await publish(b"x" * (CARRIED_DATA_BYTES + 1), topic=RPC_TOPIC)


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
