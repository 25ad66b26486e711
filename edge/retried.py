"""The room-log message ids of a socket's actions whose append failed: a retry reuses them.

An action is appended with a fresh ``Nats-Msg-Id``. When its append is not confirmed within
the action deadline the edge answers ``UNAVAILABLE``, yet the event may have been stored (a
stream-leader election lost the ack). The SDKs then send the same request again, with the
same request id, on the same socket: the edge appends it under the message id of the failed
attempt, so JetStream stores it at most once (within its 2-minute duplicate window; the SDKs
stop retrying after 15 s) and the outcome of whichever copy was stored reaches the client.

One case needs a fresh id: the first copy stored past the action deadline, which the
statekeeper refuses (``UNAVAILABLE`` on the session's subject) and does not apply. A retry
under the same id would be dropped as a duplicate and never answered, so such a refusal
forgets the id (`refused`) and the next retry is appended anew. Only a refusal from the
statekeeper does that: it is the word that the stored copy was not applied. A refused id is
never taken up again, not even by an append under it that fails after the refusal came.

A pure record, bounded, one per socket (`EdgeSession.retried`); it holds nothing (no
dictionaries) until an append fails.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["RETRIED_LIMIT", "RetriedActions"]

RETRIED_LIMIT = 256
"""Failed actions remembered per socket (the oldest is forgotten first)."""


class RetriedActions:
    """Request id -> (event type, message id) of the actions whose append failed."""

    __slots__ = ("_failed", "_limit", "_spent")

    def __init__(self, limit: int = RETRIED_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._failed: OrderedDict[int, tuple[str, str]] | None = None
        """Made at the first failure (most sockets never see one)."""
        self._spent: OrderedDict[str, None] | None = None
        """Message ids whose stored copy the statekeeper refused: never reused."""

    def __len__(self) -> int:
        return len(self._failed) if self._failed else 0

    def msg_id(self, req: int, event_type: str, fresh: Callable[[], str]) -> str:
        """The message id to append request `req` (an `event_type` event) with: the failed
        attempt's when this is its retry, else `fresh()`."""
        known = self._failed.get(req) if self._failed else None
        if known is not None and known[0] == event_type:
            return known[1]
        return fresh()

    def failed(self, req: int, event_type: str, msg_id: str) -> None:
        """The append of `req` under `msg_id` was not confirmed: remember it for a retry."""
        if self._spent and msg_id in self._spent:
            return
        failed = self._failed
        if failed is None:
            failed = self._failed = OrderedDict()
        failed[req] = (event_type, msg_id)
        failed.move_to_end(req)
        _bound(failed, self._limit)

    def refused(self, req: int) -> None:
        """The statekeeper refused `req`'s stored copy (not applied): a retry is new."""
        known = self._failed.pop(req, None) if self._failed else None
        if known is not None:
            spent = self._spent
            if spent is None:
                spent = self._spent = OrderedDict()
            spent[known[1]] = None
            _bound(spent, self._limit)


def _bound(items: OrderedDict[Any, Any], limit: int) -> None:
    """Forget the oldest of `items` beyond `limit`."""
    while len(items) > limit:
        items.popitem(last=False)
