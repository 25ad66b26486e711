"""The replies the fold sent lately, kept to be sent again to an edge that missed one.

An action's outcome (its `ack` or `error`, or a server API call's reply) goes to the asker
over core NATS, which keeps nothing: published while the statekeeper's or the edge's NATS
link is down (a node of the cluster killed), it is lost, and the client waits for it in
vain. An edge that appended an action and heard nothing back asks for it
(`ActionOutcomeRequest`), naming the log sequence the append was stored at and the subject
the reply was to go to; the statekeeper answers from here.

A pure record, bounded by count and by bytes (the oldest is forgotten first); a frame
larger than an `ActionOutcome` can carry is not kept. One per folding statekeeper
(`Statekeeper.recent`).
"""

from __future__ import annotations

from collections import OrderedDict

from schemas.api import OUTCOME_FRAME_BYTES

__all__ = ["RECENT_REPLIES", "RECENT_REPLY_BYTES", "RecentReplies"]

RECENT_REPLIES = 10_000
"""Replies kept per statekeeper: many seconds of actions (an edge asks after about two)."""
RECENT_REPLY_BYTES = 16 * 1024 * 1024
"""Bytes of reply frames kept per statekeeper (an ack is ~20 bytes, a room's reply more)."""


class RecentReplies:
    """(log sequence, subject) -> frame of the last `limit` replies to actions, at most
    `max_bytes` of frames in all."""

    __slots__ = ("_bytes", "_limit", "_max_bytes", "_replies")

    def __init__(self, limit: int = RECENT_REPLIES, max_bytes: int = RECENT_REPLY_BYTES) -> None:
        if limit < 1 or max_bytes < 1:
            raise ValueError("limit and max_bytes must be at least 1")
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0
        self._replies: OrderedDict[tuple[int, str], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._replies)

    @property
    def size(self) -> int:
        """Bytes of the frames kept."""
        return self._bytes

    def kept(self, seq: int, subject: str, frame: bytes) -> None:
        """The fold replied `frame` to `subject` for the event at log sequence `seq`."""
        if len(frame) > min(OUTCOME_FRAME_BYTES, self._max_bytes):
            return  # could not be sent again in one answer: asked for, it is "not kept"
        replies = self._replies
        old = replies.pop((seq, subject), None)
        if old is not None:
            self._bytes -= len(old)
        replies[seq, subject] = frame
        self._bytes += len(frame)
        while len(replies) > self._limit or self._bytes > self._max_bytes:
            _key, dropped = replies.popitem(last=False)
            self._bytes -= len(dropped)

    def reply(self, seq: int, subject: str) -> bytes | None:
        """The frame replied to `subject` for `seq`, if it is kept (a reply goes only
        where it went the first time)."""
        return self._replies.get((seq, subject))
