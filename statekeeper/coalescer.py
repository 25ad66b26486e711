"""Count coalescing: at most one count update per room per window, only on change.

Pure and clock-free: the shell calls `moved(room, now)` when the fold says a room's counts
moved and `due(now)` on every tick; `due` returns the rooms whose window is open and that
have something new to say. The last change is always delivered: a room marked moved stays
pending until a tick at or after its window's end.
"""

from __future__ import annotations

import dataclasses

WINDOW_MS = 250


@dataclasses.dataclass(slots=True)
class _RoomWindow:
    last_sent_at: int = -(10**12)
    pending: bool = False


class CountCoalescer:
    """Decides when each room's counts go out."""

    def __init__(self, window_ms: int = WINDOW_MS) -> None:
        self.window_ms = window_ms
        self._rooms: dict[str, _RoomWindow] = {}
        self._pending: set[str] = set()

    def moved(self, room_id: str) -> None:
        """The room's counts changed."""
        window = self._rooms.get(room_id)
        if window is None:
            window = self._rooms[room_id] = _RoomWindow()
        window.pending = True
        self._pending.add(room_id)

    def due(self, now_ms: int) -> list[str]:
        """Rooms whose update may go out now; each is marked sent at `now_ms`."""
        ready = []
        for room_id in sorted(self._pending):
            window = self._rooms[room_id]
            if now_ms - window.last_sent_at >= self.window_ms:
                window.pending = False
                window.last_sent_at = now_ms
                ready.append(room_id)
        self._pending.difference_update(ready)
        return ready

    def drop(self, room_id: str) -> None:
        """Forget a closed room."""
        self._rooms.pop(room_id, None)
        self._pending.discard(room_id)

    @property
    def pending(self) -> int:
        return len(self._pending)
