"""The outbound side of one socket: direct writes, a bounded queue while paused (STYLE 7).

Frames are complete WebSocket frames (`edge.wsframe`), written to the socket's `FrameSink`
(the transport, `edge.rtcsocket`) at once while it is writable. Only while the transport is
paused (its buffer is over the high-water mark: the client reads slower than the edge
writes) do frames wait here, and the sink's `on_writable` callback drains them when it
resumes. No task and no buffer per idle socket.

Frames are never dropped silently: when `capacity` frames wait, the next `put` fails, the
queue reports the overflow once (the session closes the socket with `SLOW_CONSUMER` 4010)
and discards what it held. Count updates coalesce into one slot (latest wins) that keeps its
place in line: the first update since the last write enqueues a marker; later ones only
replace the slot's bytes. Active speaker updates have a slot of their own, the same way.
A close is queued like a frame, so the frames before it go out first; `abort` closes at
once, dropping the rest.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Protocol


class FrameSink(Protocol):
    """Where a socket's frames go (`edge.rtcsocket.RtcSocket` implements it over the transport)."""

    on_writable: Callable[[], None] | None
    """Called when the sink is ready again, or is gone (the queue's `drain`)."""

    @property
    def ready(self) -> bool:
        """True when a frame written now goes straight to the transport (not paused)."""

    @property
    def gone(self) -> bool:
        """True once nothing more can be written (closed, closing or lost)."""

    def write(self, frame: bytes) -> None:
        """Write one complete WebSocket frame."""

    def close(self, code: int, reason: str) -> None:
        """Send the close frame; the socket winds down."""

    def drop(self) -> None:
        """Abort the connection at once (a peer that stopped reading, or a dead one)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _CloseMark:
    code: int
    reason: str


class _SlotMark:
    """Where a coalesced slot (counts, or active speakers) sits in line."""


_COUNTS = _SlotMark()
_VOICE = _SlotMark()
_Item = bytes | _SlotMark | _CloseMark


class SendQueue:
    """One socket's outbound frames (see the module docstring).

    `on_overflow` is called once, synchronously, when a `put` finds the queue full. When
    the close went to the sink (or the sink is gone) the queue is `finished` and calls
    `on_finished`, if set.
    """

    __slots__ = (
        "_counts",
        "_counts_queued",
        "_items",
        "_on_overflow",
        "_sink",
        "_voice",
        "_voice_queued",
        "capacity",
        "closing",
        "finished",
        "on_finished",
        "overflowed",
        "sent",
    )

    def __init__(
        self, capacity: int, sink: FrameSink, on_overflow: Callable[[], None] | None = None
    ) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self._sink = sink
        self._on_overflow = on_overflow
        self._items: collections.deque[_Item] | None = None
        """Frames waiting for the paused sink (None while none wait: no deque per socket)."""
        self._counts: bytes | None = None
        self._counts_queued = False
        self._voice: bytes | None = None
        self._voice_queued = False
        self.closing = False
        """True once a close is queued (or the queue was aborted): nothing more goes in."""
        self.finished = False
        """True once the close went out or the sink is gone."""
        self.on_finished: Callable[[], None] | None = None
        self.overflowed = False
        self.sent = 0
        sink.on_writable = self.drain

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def put(self, frame: bytes) -> bool:
        """Write or queue a frame; False if the queue is closing or just overflowed."""
        if self.closing:
            return False
        return self._write_or_queue(frame, frame)

    def put_counts(self, frame: bytes) -> bool:
        """Replace the coalesced counts frame; it goes out in the place of the first update."""
        if self.closing:
            return False
        if self._counts_queued:
            self._counts = frame
            return True
        if not self._write_or_queue(frame, _COUNTS):
            return False
        if self._items:  # it waits in line: later updates replace it there
            self._counts = frame
            self._counts_queued = True
        return True

    def put_voice(self, frame: bytes) -> bool:
        """Replace the coalesced active speakers frame (like `put_counts`, its own slot)."""
        if self.closing:
            return False
        if self._voice_queued:
            self._voice = frame
            return True
        if not self._write_or_queue(frame, _VOICE):
            return False
        if self._items:
            self._voice = frame
            self._voice_queued = True
        return True

    def _write_or_queue(self, frame: bytes, item: _Item) -> bool:
        """Write `frame` now if nothing waits and the sink is ready, else queue `item`."""
        if not self._items and self._sink.ready:
            self._sink.write(frame)
            self.sent += 1
            return True
        items = self._line()
        if items is None:
            return False
        items.append(item)
        return True

    def _line(self) -> collections.deque[_Item] | None:
        """Where a frame waits for the paused sink; None when the sink is gone (the queue
        finishes) or the line is full (it overflows)."""
        items = self._items
        if items is None:
            if self._sink.gone:
                self._finish()
                return None
            items = self._items = collections.deque()
        elif len(items) >= self.capacity:
            self._overflow()
            return None
        return items

    def close_after(self, code: int, reason: str) -> None:
        """Send every queued frame, then close with `code`. Later puts are refused."""
        if self.closing:
            return
        self.closing = True
        if self._items:
            self._items.append(_CloseMark(code, reason))
        else:
            self._close(code, reason)

    def abort(self, code: int, reason: str) -> None:
        """Drop every queued frame and close with `code` at once."""
        self._items = None
        self._counts = None
        self._counts_queued = False
        self._voice = None
        self._voice_queued = False
        self.closing = True
        self._close(code, reason)

    def drain(self) -> None:
        """Write what waits while the sink takes it (the sink calls this on resume)."""
        sink = self._sink
        items = self._items
        while items and sink.ready:
            item = items.popleft()
            if isinstance(item, _CloseMark):
                self._items = None
                self._close(item.code, item.reason)
                return
            if isinstance(item, _SlotMark):
                if item is _COUNTS:
                    slot, self._counts = self._counts, None
                    self._counts_queued = False
                else:
                    slot, self._voice = self._voice, None
                    self._voice_queued = False
                if slot is None:
                    continue
                data = slot
            else:
                data = item
            sink.write(data)
            self.sent += 1
        if not items:
            self._items = None
        elif sink.gone:
            self._finish()

    def _close(self, code: int, reason: str) -> None:
        if self.finished:
            return
        if not self._sink.gone:
            self._sink.close(code, reason)
        self._finish()

    def _finish(self) -> None:
        self.closing = True
        self._items = None
        self._counts = None
        self._voice = None
        if not self.finished:
            self.finished = True
            if self.on_finished is not None:
                self.on_finished()

    def _overflow(self) -> None:
        if self.overflowed:
            return
        self.overflowed = True
        if self._on_overflow is not None:
            self._on_overflow()
        if not self.closing:
            self.abort(4010, "SLOW_CONSUMER")


__all__ = ["FrameSink", "SendQueue"]
