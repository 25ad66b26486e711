"""The replies the fold sent lately, kept to be sent again to an edge that missed one.

An action's outcome (its `ack` or `error`) goes to the asking session over core NATS, which
keeps nothing: published while the statekeeper's or the edge's NATS link is down (a node
of the cluster killed), it is lost, and the client waits for it in vain. An edge that
appended an action and heard nothing back asks for it (`ActionOutcomeRequest`), naming the
log sequence the append was stored at; the statekeeper answers from here.

A pure record, bounded by count (the oldest is forgotten first): one per folding
statekeeper (`Statekeeper.recent`).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RECENT_REPLIES", "RecentReplies"]

RECENT_REPLIES = 10_000
"""Replies kept per statekeeper: many seconds of actions (an edge asks after about one)."""


class RecentReplies:
    """(log sequence, subject) -> frame of the last `limit` replies to actions."""

    __slots__ = ("_limit", "_replies")

    def __init__(self, limit: int = RECENT_REPLIES) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._replies: OrderedDict[tuple[int, str], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._replies)

    def kept(self, seq: int, subject: str, frame: bytes) -> None:
        """The fold replied `frame` to `subject` for the event at log sequence `seq`."""
        replies = self._replies
        replies[seq, subject] = frame
        if len(replies) > self._limit:
            replies.popitem(last=False)

    def reply(self, seq: int, subject: str) -> bytes | None:
        """The frame replied to `subject` for `seq`, if it is kept (a reply goes only
        where it went the first time)."""
        return self._replies.get((seq, subject))
