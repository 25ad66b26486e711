"""RPC between participants (LiveKit's names, codes and semantics).

A call is an `RpcRequest` sent as reliable data to one participant; the recipient answers
with an `RpcResponse` when its handler returns, preceded by an `RpcAck` when the handler
takes longer than `ACK_DELAY` (a response acknowledges too). The caller raises
`RpcError` with LiveKit's code when anything goes wrong: the recipient is not in the room
(1401), no acknowledgement within `ACK_TIMEOUT` (1501), no response within the response
timeout (1502), the recipient left meanwhile (1503), a payload over `RPC_PAYLOAD_BYTES`
(1402 / 1504), no handler for the method (1400), or the handler raised (1500, with its
message; a handler raising `RpcError` chooses the code, message and data itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from schemas.codec import Message
from schemas.streams import (
    RPC_PAYLOAD_BYTES,
    RPC_TOPIC,
    RpcAck,
    RpcFailure,
    RpcRequest,
    RpcResponse,
)
from stagecast.client.streams import Request, send_reliable
from stagecast.errors import RpcError, StagecastError

log = logging.getLogger("stagecast.client")

ACK_TIMEOUT = 5.0
"""How long a caller waits for the recipient's acknowledgement (then 1501)."""
ACK_DELAY = 0.5
"""A recipient whose handler answers within this many seconds sends the response alone
(it acknowledges too); a slower one sends an `RpcAck` first. Each message is a frame of the
recipient's socket, so this halves what a busy RPC server spends of its frame rate."""


@dataclasses.dataclass(frozen=True, slots=True)
class RpcInvocationData:
    """What a method handler gets: the request id, the caller, the payload and how long
    the caller waits for the response (seconds)."""

    request_id: str
    caller_id: str
    payload: str
    response_timeout: float


RpcHandler = Callable[[RpcInvocationData], Awaitable[str] | str]


@dataclasses.dataclass(slots=True)
class _PendingCall:
    destination_id: str
    acked: asyncio.Future[None]
    response: asyncio.Future[RpcResponse]


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: no "never retrieved" warning when nobody awaits it


class RpcEndpoint:
    """A room's RPC: methods this client serves, and the calls it has in flight."""

    def __init__(
        self,
        request: Request,
        present: Callable[[str], bool],
        tasks: set[asyncio.Task[Any]],
    ) -> None:
        self._request = request
        self._present = present
        self._tasks = tasks
        self._methods: dict[str, RpcHandler] = {}
        self._pending: dict[str, _PendingCall] = {}
        self._closed_why = ""

    # ------------------------------------------------------------------ serving

    def register(self, method: str, handler: RpcHandler) -> None:
        """Serve `method` with `handler` (replacing any handler it had)."""
        self._methods[method] = handler

    def unregister(self, method: str) -> None:
        self._methods.pop(method, None)

    # ------------------------------------------------------------------ calling

    async def perform(
        self, destination_id: str, method: str, payload: str, response_timeout: float
    ) -> str:
        """Call `method` on `destination_id`; its response payload, or `RpcError`."""
        if len(payload.encode()) > RPC_PAYLOAD_BYTES:
            raise RpcError(
                RpcError.REQUEST_PAYLOAD_TOO_LARGE,
                f"the payload is over {RPC_PAYLOAD_BYTES} bytes",
            )
        if self._closed_why:
            raise RpcError(RpcError.RECIPIENT_DISCONNECTED, self._closed_why)
        if not self._present(destination_id):
            raise RpcError(RpcError.RECIPIENT_NOT_FOUND, f"{destination_id!r} is not in the room")
        loop = asyncio.get_running_loop()
        request_id = uuid.uuid4().hex
        call = _PendingCall(destination_id, loop.create_future(), loop.create_future())
        self._pending[request_id] = call
        try:
            request = RpcRequest(
                request_id=request_id,
                method=method,
                payload=payload,
                response_timeout_ms=max(0, int(response_timeout * 1000)),
            )
            try:
                await send_reliable(self._request, RPC_TOPIC, request, (destination_id,))
            except StagecastError as exc:
                raise RpcError(RpcError.SEND_FAILED, f"the request was not sent: {exc}") from exc
            try:
                await asyncio.wait_for(
                    asyncio.shield(call.acked), min(ACK_TIMEOUT, response_timeout)
                )
            except TimeoutError:
                raise RpcError(
                    RpcError.CONNECTION_TIMEOUT, f"{destination_id!r} did not acknowledge the call"
                ) from None
            try:
                response = await asyncio.wait_for(asyncio.shield(call.response), response_timeout)
            except TimeoutError:
                raise RpcError(
                    RpcError.RESPONSE_TIMEOUT,
                    f"no response from {destination_id!r} within {response_timeout} s",
                ) from None
        finally:
            del self._pending[request_id]
        if response.error is not None:
            error = response.error
            raise RpcError(error.code, error.message, error.data)
        return response.payload

    # ------------------------------------------------------------------ the room feeds it

    def on_message(self, sender_id: str, message: Message) -> None:
        """Apply one RPC message from `sender_id` (as the edge stamped it)."""
        if isinstance(message, RpcRequest):
            task = asyncio.ensure_future(self._serve(sender_id, message))
            self._tasks.add(task)
            task.add_done_callback(self._served)
            return
        if not isinstance(message, (RpcAck, RpcResponse)):
            return
        call = self._pending.get(message.request_id)
        if call is None or call.destination_id != sender_id:
            return  # late, or not from the participant called: ignored
        if not call.acked.done():
            call.acked.set_result(None)
        if isinstance(message, RpcResponse) and not call.response.done():
            call.response.set_result(message)

    def participant_left(self, participant_id: str) -> None:
        """Fail the calls in flight to `participant_id` (1503)."""
        for call in self._pending.values():
            if call.destination_id == participant_id:
                error = RpcError(RpcError.RECIPIENT_DISCONNECTED, f"{participant_id!r} left")
                _fail(call.acked, error)
                _fail(call.response, error)

    def close(self, why: str) -> None:
        """Fail every call in flight (this client left the room); later calls fail too."""
        self._closed_why = why
        for call in self._pending.values():
            error = RpcError(RpcError.RECIPIENT_DISCONNECTED, why)
            _fail(call.acked, error)
            _fail(call.response, error)

    async def _serve(self, caller_id: str, request: RpcRequest) -> None:
        reply_to = (caller_id,)
        answer = asyncio.ensure_future(self._answer(caller_id, request))
        ack_delay = min(ACK_DELAY, request.response_timeout_ms / 4000)
        done, _ = await asyncio.wait({answer}, timeout=ack_delay)
        if not done:  # a slow handler: tell the caller the call arrived
            ack = RpcAck(request_id=request.request_id)
            await send_reliable(self._request, RPC_TOPIC, ack, reply_to)
        failure, payload = await answer
        response = RpcResponse(request_id=request.request_id, payload=payload, error=failure)
        await send_reliable(self._request, RPC_TOPIC, response, reply_to)

    async def _answer(self, caller_id: str, request: RpcRequest) -> tuple[RpcFailure | None, str]:
        handler = self._methods.get(request.method)
        if handler is None:
            message = f"method {request.method!r} is not registered"[:256]
            return RpcFailure(code=RpcError.UNSUPPORTED_METHOD, message=message), ""
        return await self._run(handler, caller_id, request)

    async def _run(
        self, handler: RpcHandler, caller_id: str, request: RpcRequest
    ) -> tuple[RpcFailure | None, str]:
        timeout = request.response_timeout_ms / 1000
        invocation = RpcInvocationData(request.request_id, caller_id, request.payload, timeout)
        try:
            result = handler(invocation)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, timeout)
        except RpcError as exc:
            fits = len(exc.data.encode()) <= RPC_PAYLOAD_BYTES
            data = exc.data if fits else ""
            return RpcFailure(code=exc.code, message=exc.message[:256], data=data), ""
        except TimeoutError:
            return RpcFailure(code=RpcError.RESPONSE_TIMEOUT, message="the handler timed out"), ""
        except Exception as exc:
            log.info("RPC handler for %r raised %r", request.method, exc)
            message = f"{type(exc).__name__}: {exc}"[:256]
            return RpcFailure(code=RpcError.APPLICATION_ERROR, message=message), ""
        if result is None:
            result = ""
        if not isinstance(result, str):
            message = f"the handler returned {type(result).__name__}, not str"
            return RpcFailure(code=RpcError.APPLICATION_ERROR, message=message), ""
        if len(result.encode()) > RPC_PAYLOAD_BYTES:
            message = f"the response is over {RPC_PAYLOAD_BYTES} bytes"
            return RpcFailure(code=RpcError.RESPONSE_PAYLOAD_TOO_LARGE, message=message), ""
        return None, result

    def _served(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("answering an RPC failed: %r", task.exception())
