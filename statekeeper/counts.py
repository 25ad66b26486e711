"""Room counts to clients: the coalescer decides when, this sends what changed.

Moderators also get `audience_changed` once per window in which anyone joined, left or
changed tier (even when the counts came back to what they were: the roster differs).
"""

from __future__ import annotations

from collections.abc import Callable

from schemas import subjects
from schemas.client import AudienceChanged, CountsChanged
from schemas.codec import encode
from schemas.models import Counts
from statekeeper.coalescer import CountCoalescer
from statekeeper.state import State


class CountPublisher:
    """Publishes `CountsChanged` on a room's counts subject and `AudienceChanged` on its
    moderators' subject, each at most once per window."""

    def __init__(self, publish: Callable[[str, bytes], None]) -> None:
        self._publish = publish
        self.coalescer = CountCoalescer()
        self._sent: dict[str, Counts] = {}

    def moved(self, room_id: str) -> None:
        """The fold says the room's counts moved."""
        self.coalescer.moved(room_id)

    def ended(self, room_id: str) -> None:
        """The room is gone: forget its window and what was sent."""
        self.coalescer.drop(room_id)
        self._sent.pop(room_id, None)

    def publish_due(self, state: State, now: int) -> None:
        """Publish the counts of every room whose window is open and whose counts differ
        from the last ones sent."""
        for room_id in self.coalescer.due(now):
            room = state.rooms.get(room_id)
            if room is None:
                continue
            counts = room.counts()
            audience = AudienceChanged(seq=room.last_seq, counts=counts)
            self._publish(subjects.room_mod(room_id), encode(audience))
            if self._sent.get(room_id) == counts:
                continue  # it changed and changed back within the window
            self._sent[room_id] = counts
            message = CountsChanged(seq=room.last_seq, counts=counts)
            self._publish(subjects.room_counts(room_id), encode(message))
