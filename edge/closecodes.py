"""The WebSocket close code for each way a session ends (docs/protocol.md, the one table)."""

from __future__ import annotations

from schemas.errors import ErrorCode

CLOSE_CODES: dict[str, int] = {
    ErrorCode.INVALID_TOKEN.value: 4001,
    ErrorCode.TOKEN_EXPIRED.value: 4002,
    ErrorCode.RATE_LIMITED.value: 4008,
    ErrorCode.SLOW_CONSUMER.value: 4010,
    ErrorCode.DUPLICATE_IDENTITY.value: 4011,
    ErrorCode.REMOVED.value: 4012,
    ErrorCode.ROOM_DELETED.value: 4013,
    ErrorCode.ROOM_CLOSED.value: 4014,
    ErrorCode.ROOM_FULL.value: 4015,
    ErrorCode.RESUME_FAILED.value: 4016,
    ErrorCode.SERVER_SHUTDOWN.value: 4017,
    ErrorCode.CLIENT_LEFT.value: 1000,
}

POLICY_VIOLATION = 1008
"""A join refused for a reason with no code of its own (a room id the token does not allow)."""
TRY_AGAIN_LATER = 1013
"""A join the statekeeper did not answer in time (`UNAVAILABLE`)."""


def close_code(reason: str) -> int:
    """The close code for an error code or disconnect reason (1008 for any other)."""
    return CLOSE_CODES.get(reason, POLICY_VIOLATION)


__all__ = ["CLOSE_CODES", "POLICY_VIOLATION", "TRY_AGAIN_LATER", "close_code"]
