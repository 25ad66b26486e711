"""The WebSocket close code for each way a session ends (docs/protocol.md, the one table)."""

from __future__ import annotations

from schemas.errors import CLOSE_CODES

POLICY_VIOLATION = 1008
"""A join refused for a reason with no code of its own (a room id the token does not allow)."""
TRY_AGAIN_LATER = 1013
"""A join the statekeeper did not answer in time (`UNAVAILABLE`)."""


def close_code(reason: str) -> int:
    """The close code for an error code or disconnect reason (1008 for any other)."""
    return CLOSE_CODES.get(reason, POLICY_VIOLATION)


__all__ = ["CLOSE_CODES", "POLICY_VIOLATION", "TRY_AGAIN_LATER", "close_code"]
