"""Golden cases of the stream and RPC messages (`schemas.streams`), for tests/test_schemas.py."""

from __future__ import annotations

from schemas.codec import Message
from schemas.streams import (
    RpcAck,
    RpcFailure,
    RpcRequest,
    RpcResponse,
    StreamChunk,
    StreamHeader,
    StreamTrailer,
)

STREAM_CASES: tuple[Message, ...] = (
    StreamHeader(
        stream_id="ST_1",
        topic="transcription",
        kind="text",
        mime_type="text/plain",
        total_size=12,
        attributes={"lang": "fr"},
        timestamp=1_700_000_000_456,
    ),
    StreamChunk(stream_id="ST_1", index=0, content="Zoë".encode()),
    StreamTrailer(stream_id="ST_1", chunks=1, reason="cancelled"),
    RpcRequest(request_id="RQ_1", method="greet", payload='{"n":1}', response_timeout_ms=5000),
    RpcAck(request_id="RQ_1"),
    RpcResponse(
        request_id="RQ_1",
        error=RpcFailure(code=1500, message="ValueError: offline", data="x"),
    ),
)

STREAM_GOLDEN_HEX: dict[str, str] = {
    "stream.header": (
        "89a174ad73747265616d2e686561646572a17601a973747265616d5f6964a453545f31a5746f706963ad7472"
        "616e736372697074696f6ea46b696e64a474657874a96d696d655f74797065aa746578742f706c61696eaa74"
        "6f74616c5f73697a650caa6174747269627574657381a46c616e67a26672a974696d657374616d70cf000001"
        "8bcfe569c8"
    ),
    "stream.chunk": (
        "85a174ac73747265616d2e6368756e6ba17601a973747265616d5f6964a453545f31a5696e64657800a7636f"
        "6e74656e74c4045a6fc3ab"
    ),
    "stream.trailer": (
        "85a174ae73747265616d2e747261696c6572a17601a973747265616d5f6964a453545f31a66368756e6b7301"
        "a6726561736f6ea963616e63656c6c6564"
    ),
    "rpc.request": (
        "86a174ab7270632e72657175657374a17601aa726571756573745f6964a452515f31a66d6574686f64a56772"
        "656574a77061796c6f6164a77b226e223a317db3726573706f6e73655f74696d656f75745f6d73cd1388"
    ),
    "rpc.ack": ("83a174a77270632e61636ba17601aa726571756573745f6964a452515f31"),
    "rpc.response": (
        "84a174ac7270632e726573706f6e7365a17601aa726571756573745f6964a452515f31a56572726f7283a463"
        "6f6465cd05dca76d657373616765b356616c75654572726f723a206f66666c696e65a464617461a178"
    ),
}
"""`encode(case).hex()` for every case above, by tag."""
