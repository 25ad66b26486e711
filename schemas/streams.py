"""Text and byte streams and RPC between participants, carried over reliable data.

These messages never travel as frames of their own: each is encoded (`encode`) into the
payload of a `PublishData` on a reserved topic (`STREAM_TOPIC`, `RPC_TOPIC`), so they
inherit the data path's ordering, destinations and byte budgets (counted on the bytes
carried). A reserved topic's payload may exceed the 15 KiB of application data by
`ENVELOPE_BYTES` (`data_limit`), so that an RPC payload of a full 15 KiB fits with its
envelope. The edge stamps the sender on the `DataReceived` that carries them; a receiver
trusts only that.

A stream is a `StreamHeader`, `StreamChunk`s numbered from 0, then a `StreamTrailer` with
the chunk count (and a reason when the sender aborted it). An RPC is an `RpcRequest`, an
`RpcAck` as soon as the recipient has it, then an `RpcResponse` with a payload or an error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from schemas.codec import MaxBytes, Message, Struct
from schemas.models import CARRIED_DATA_BYTES, DATA_BYTES, Attributes, Identity, Name

STREAM_TOPIC = "sc.stream"
"""The data topic stream messages ride on (never delivered as `data-received`)."""
RPC_TOPIC = "sc.rpc"
"""The data topic RPC messages ride on (never delivered as `data-received`)."""
RESERVED_TOPICS = frozenset({STREAM_TOPIC, RPC_TOPIC})

CHUNK_BYTES = 14 * 1024
"""The most content one `StreamChunk` carries: with its envelope it stays under 15 KiB
(so receivers from before `ENVELOPE_BYTES` still take every chunk)."""
RPC_PAYLOAD_BYTES = DATA_BYTES
"""The largest RPC request or response payload: 15 KiB (15,360 bytes) of UTF-8, LiveKit's
limit; its envelope rides in the reserved topic's `ENVELOPE_BYTES`."""


def data_limit(topic: str | None) -> int:
    """The most payload bytes a data message on `topic` may carry: `DATA_BYTES`, or
    `CARRIED_DATA_BYTES` on a reserved topic (the envelope around a full 15 KiB RPC
    payload). The schema admits the larger on every topic; the edge applies this."""
    return CARRIED_DATA_BYTES if topic in RESERVED_TOPICS else DATA_BYTES


StreamKind = Literal["text", "bytes"]
ChunkContent = Annotated[bytes, Meta(max_length=CHUNK_BYTES)]
RpcPayload = Annotated[str, Meta(max_length=RPC_PAYLOAD_BYTES), MaxBytes(RPC_PAYLOAD_BYTES)]
Count = Annotated[int, Meta(ge=0)]


class StreamHeader(Message, tag="stream.header", frozen=True, kw_only=True):
    """Opens a stream: what it is, before any chunk. `total_size` is None when unknown."""

    stream_id: Identity
    topic: Identity
    kind: StreamKind
    mime_type: Name = ""
    name: Name = ""
    total_size: Count | None = None
    attributes: Attributes = {}
    timestamp: Count = 0


class StreamChunk(Message, tag="stream.chunk", frozen=True, kw_only=True):
    """One piece of a stream's content; `index` counts from 0 with no gaps.

    A text stream's chunks each hold whole UTF-8 characters.
    """

    stream_id: Identity
    index: Count
    content: ChunkContent


class StreamTrailer(Message, tag="stream.trailer", frozen=True, kw_only=True):
    """Closes a stream after `chunks` chunks; a non-empty `reason` means the sender aborted."""

    stream_id: Identity
    chunks: Count
    reason: Name = ""


class RpcRequest(Message, tag="rpc.request", frozen=True, kw_only=True):
    """Call `method` on the destination participant with `payload`."""

    request_id: Identity
    method: Identity
    payload: RpcPayload = ""
    response_timeout_ms: Count = 10_000


class RpcAck(Message, tag="rpc.ack", frozen=True, kw_only=True):
    """The recipient received the request (the caller's connection timeout stops here)."""

    request_id: Identity


class RpcFailure(Struct, frozen=True, kw_only=True):
    """Why an RPC failed: LiveKit's codes (1500 application error, 1400 unsupported
    method, ...), a message and optional data."""

    code: Annotated[int, Meta(ge=0, le=65535)]
    message: Name = ""
    data: RpcPayload = ""


class RpcResponse(Message, tag="rpc.response", frozen=True, kw_only=True):
    """The answer to a request: `payload`, or `error` when the call failed."""

    request_id: Identity
    payload: RpcPayload = ""
    error: RpcFailure | None = None


__all__ = [
    "CHUNK_BYTES",
    "RESERVED_TOPICS",
    "RPC_PAYLOAD_BYTES",
    "RPC_TOPIC",
    "STREAM_TOPIC",
    "RpcAck",
    "RpcFailure",
    "RpcRequest",
    "RpcResponse",
    "StreamChunk",
    "StreamHeader",
    "StreamKind",
    "StreamTrailer",
    "data_limit",
]
