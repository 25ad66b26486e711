"""Golden cases of the messages agents use, for tests/test_schemas.py: streams and RPC
(`schemas.streams`), dispatch (`schemas.agents`, and its room-log events in `schemas.log`)."""

from __future__ import annotations

from schemas.agents import (
    AgentDispatch,
    AgentJobAccepted,
    AgentJobEnded,
    AgentJobEndedEvent,
    AgentJobOffer,
    AgentJobStartedEvent,
    AgentWorkerBeat,
    DeleteDispatchRequest,
    DispatchAgentRequest,
    DispatchListReply,
    DispatchReply,
    ListDispatchesRequest,
)
from schemas.codec import Message
from schemas.log import DispatchCreated, DispatchDeleted, DispatchEnded, DispatchStarted
from schemas.streams import (
    RpcAck,
    RpcFailure,
    RpcRequest,
    RpcResponse,
    StreamChunk,
    StreamHeader,
    StreamTrailer,
)

JOB = AgentDispatch(
    id="AJ_1",
    room_id="demo",
    agent_name="assistant",
    metadata='{"lang":"fr"}',
    state="running",
    worker_id="AW_1",
    attempt=1,
    created_at=1_700_000_000_123,
)

AGENT_CASES: tuple[Message, ...] = (
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
    DispatchAgentRequest(room_id="demo", agent_name="assistant", metadata='{"lang":"fr"}'),
    ListDispatchesRequest(room_id="demo"),
    DeleteDispatchRequest(room_id="demo", dispatch_id="AJ_1"),
    DispatchReply(dispatch=JOB),
    DispatchListReply(dispatches=(JOB,)),
    AgentWorkerBeat(worker_id="AW_1", agent_name="assistant", jobs=("AJ_1",), capacity=4),
    AgentJobOffer(dispatch=JOB),
    AgentJobAccepted(job_id="AJ_1", worker_id="AW_1"),
    AgentJobEnded(job_id="AJ_1", worker_id="AW_1", reason="completed"),
    AgentJobStartedEvent(id="AJ_1.1.started", at=1_700_000_000_456, room_id="demo", dispatch=JOB),
    AgentJobEndedEvent(
        id="AJ_1.1.ended", at=1_700_000_000_457, room_id="demo", dispatch=JOB, reason="worker_lost"
    ),
    DispatchCreated(
        room_id="demo",
        at=1_700_000_000_123,
        dispatch_id="AJ_1",
        agent_name="assistant",
        metadata='{"lang":"fr"}',
        reply_to="_INBOX_edge.x",
    ),
    DispatchDeleted(
        room_id="demo", at=1_700_000_000_124, dispatch_id="AJ_1", reply_to="_INBOX_e.y"
    ),
    DispatchStarted(
        room_id="demo", at=1_700_000_000_125, dispatch_id="AJ_1", worker_id="AW_1", attempt=0
    ),
    DispatchEnded(
        room_id="demo", at=1_700_000_000_126, dispatch_id="AJ_1", worker_id="AW_1", reason="done"
    ),
)

AGENT_GOLDEN_HEX: dict[str, str] = {
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
    "api.dispatch_agent": (
        "85a174b26170692e64697370617463685f6167656e74a17601a7726f6f6d5f6964a464656d6faa6167656e74"
        "5f6e616d65a9617373697374616e74a86d65746164617461ad7b226c616e67223a226672227d"
    ),
    "api.list_dispatches": (
        "83a174b36170692e6c6973745f64697370617463686573a17601a7726f6f6d5f6964a464656d6f"
    ),
    "api.dispatch": (
        "83a174ac6170692e6469737061746368a17601a8646973706174636888a26964a4414a5f31a7726f6f6d5f69"
        "64a464656d6faa6167656e745f6e616d65a9617373697374616e74a86d65746164617461ad7b226c616e6722"
        "3a226672227da57374617465a772756e6e696e67a9776f726b65725f6964a441575f31a7617474656d707401"
        "aa637265617465645f6174cf0000018bcfe5687b"
    ),
    "api.dispatches": (
        "83a174ae6170692e64697370617463686573a17601aa646973706174636865739188a26964a4414a5f31a772"
        "6f6f6d5f6964a464656d6faa6167656e745f6e616d65a9617373697374616e74a86d65746164617461ad7b22"
        "6c616e67223a226672227da57374617465a772756e6e696e67a9776f726b65725f6964a441575f31a7617474"
        "656d707401aa637265617465645f6174cf0000018bcfe5687b"
    ),
    "agent.beat": (
        "86a174aa6167656e742e62656174a17601a9776f726b65725f6964a441575f31aa6167656e745f6e616d65a9"
        "617373697374616e74a46a6f627391a4414a5f31a8636170616369747904"
    ),
    "agent.offer": (
        "83a174ab6167656e742e6f66666572a17601a8646973706174636888a26964a4414a5f31a7726f6f6d5f6964"
        "a464656d6faa6167656e745f6e616d65a9617373697374616e74a86d65746164617461ad7b226c616e67223a"
        "226672227da57374617465a772756e6e696e67a9776f726b65725f6964a441575f31a7617474656d707401aa"
        "637265617465645f6174cf0000018bcfe5687b"
    ),
    "agent.accepted": (
        "84a174ae6167656e742e6163636570746564a17601a66a6f625f6964a4414a5f31a9776f726b65725f6964a4"
        "41575f31"
    ),
    "agent.ended": (
        "85a174ab6167656e742e656e646564a17601a66a6f625f6964a4414a5f31a9776f726b65725f6964a441575f"
        "31a6726561736f6ea9636f6d706c65746564"
    ),
    "event.agent_job_started": (
        "86a174b76576656e742e6167656e745f6a6f625f73746172746564a17601a26964ae414a5f312e312e737461"
        "72746564a26174cf0000018bcfe569c8a7726f6f6d5f6964a464656d6fa8646973706174636888a26964a441"
        "4a5f31a7726f6f6d5f6964a464656d6faa6167656e745f6e616d65a9617373697374616e74a86d6574616461"
        "7461ad7b226c616e67223a226672227da57374617465a772756e6e696e67a9776f726b65725f6964a441575f"
        "31a7617474656d707401aa637265617465645f6174cf0000018bcfe5687b"
    ),
    "event.agent_job_ended": (
        "87a174b56576656e742e6167656e745f6a6f625f656e646564a17601a26964ac414a5f312e312e656e646564"
        "a26174cf0000018bcfe569c9a7726f6f6d5f6964a464656d6fa8646973706174636888a26964a4414a5f31a7"
        "726f6f6d5f6964a464656d6faa6167656e745f6e616d65a9617373697374616e74a86d65746164617461ad7b"
        "226c616e67223a226672227da57374617465a772756e6e696e67a9776f726b65725f6964a441575f31a76174"
        "74656d707401aa637265617465645f6174cf0000018bcfe5687ba6726561736f6eab776f726b65725f6c6f73"
        "74"
    ),
    "api.delete_dispatch": (
        "84a174b36170692e64656c6574655f6469737061746368a17601a7726f6f6d5f6964a464656d6fab64697370"
        "617463685f6964a4414a5f31"
    ),
    "log.create_dispatch": (
        "88a174b36c6f672e6372656174655f6469737061746368a17601a7726f6f6d5f6964a464656d6fa26174cf00"
        "00018bcfe5687bab64697370617463685f6964a4414a5f31aa6167656e745f6e616d65a9617373697374616e"
        "74a86d65746164617461ad7b226c616e67223a226672227da87265706c795f746fad5f494e424f585f656467"
        "652e78"
    ),
    "log.delete_dispatch": (
        "86a174b36c6f672e64656c6574655f6469737061746368a17601a7726f6f6d5f6964a464656d6fa26174cf00"
        "00018bcfe5687cab64697370617463685f6964a4414a5f31a87265706c795f746faa5f494e424f585f652e79"
    ),
    "log.dispatch_started": (
        "87a174b46c6f672e64697370617463685f73746172746564a17601a7726f6f6d5f6964a464656d6fa26174cf"
        "0000018bcfe5687dab64697370617463685f6964a4414a5f31a9776f726b65725f6964a441575f31a7617474"
        "656d707400"
    ),
    "log.dispatch_ended": (
        "87a174b26c6f672e64697370617463685f656e646564a17601a7726f6f6d5f6964a464656d6fa26174cf0000"
        "018bcfe5687eab64697370617463685f6964a4414a5f31a9776f726b65725f6964a441575f31a6726561736f"
        "6ea4646f6e65"
    ),
}
"""`encode(case).hex()` for every case above, by tag."""
