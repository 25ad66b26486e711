"""Per-room ordered queues of one endpoint's pending deliveries (pure, bounded).

Events of a room are POSTed one after the other, in stream order; rooms are independent.
An event is identified by its stream sequence: one already held (a redelivery) is not
queued twice. `full` tells the shell to stop fetching until deliveries make room, so a
dead endpoint holds at most `limit` events in memory (the rest wait in the stream).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["RoomQueues"]

T = TypeVar("T")


class RoomQueues(Generic[T]):
    """Pending items by room, each room in the order added."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._rooms: dict[str, deque[tuple[int, T]]] = {}
        self._held: set[int] = set()

    def __len__(self) -> int:
        return len(self._held)

    @property
    def full(self) -> bool:
        return len(self._held) >= self.limit

    def rooms(self) -> list[str]:
        """Rooms with pending items."""
        return list(self._rooms)

    def add(self, room: str, seq: int, item: T) -> bool:
        """Queue `item` (stream sequence `seq`) behind the room's others.

        Returns True when the room had nothing pending (the caller starts its worker).
        A `seq` already held is ignored (False).
        """
        if seq in self._held:
            return False
        self._held.add(seq)
        queue = self._rooms.get(room)
        if queue is None:
            self._rooms[room] = deque([(seq, item)])
            return True
        queue.append((seq, item))
        return False

    def head(self, room: str) -> T | None:
        """The room's oldest pending item, or None when it has none."""
        queue = self._rooms.get(room)
        return queue[0][1] if queue else None

    def pop(self, room: str) -> None:
        """Drop the room's oldest item (delivered or given up); forget an emptied room."""
        queue = self._rooms[room]
        seq, _ = queue.popleft()
        self._held.discard(seq)
        if not queue:
            del self._rooms[room]

    def clear(self) -> None:
        self._rooms.clear()
        self._held.clear()
