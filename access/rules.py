"""The one rule set for "may this participant do X", called by the edge and the fold alike.

Each rule is pure: it takes what the participant is (its tier, its grant) and returns the
`Refusal` to send, or None when the action is allowed. The edge checks before it appends
(so a refused action costs no log entry); the statekeeper's fold checks again against the
folded state (the tier may have changed since the edge looked), so both must agree, and
they do because they call the same function.
"""

from __future__ import annotations

import dataclasses

from schemas.errors import ErrorCode
from schemas.models import Grant


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action is not allowed: the client-visible `code` and a human `reason`."""

    code: ErrorCode
    reason: str


VIEWER_PUBLISH = Refusal(
    ErrorCode.INVALID_PERMISSIONS, "viewers cannot publish; ask to be promoted"
)
GRANT_PUBLISH = Refusal(ErrorCode.INVALID_PERMISSIONS, "the grant does not allow publishing")
GRANT_SUBSCRIBE = Refusal(ErrorCode.INVALID_PERMISSIONS, "the grant does not allow subscribing")
GRANT_PUBLISH_DATA = Refusal(
    ErrorCode.INVALID_PERMISSIONS, "the grant does not allow publishing data"
)


def refuse_publish(is_viewer: bool, grant: Grant) -> Refusal | None:
    """May this participant publish a track (announce it, or offer its media)?

    A viewer never may (it must be promoted first); a speaker may if its grant allows it.
    """
    if is_viewer:
        return VIEWER_PUBLISH
    if not grant.can_publish:
        return GRANT_PUBLISH
    return None


def refuse_subscribe(grant: Grant) -> Refusal | None:
    """May this participant subscribe to (or unsubscribe from) another's media?"""
    return None if grant.can_subscribe else GRANT_SUBSCRIBE


def refuse_publish_data(grant: Grant) -> Refusal | None:
    """May this participant send data messages to the room?"""
    return None if grant.can_publish_data else GRANT_PUBLISH_DATA
