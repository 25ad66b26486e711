"""A bounded send queue per socket, drained by one writer task (STYLE rule 7).

Frames are never dropped silently: when `capacity` frames wait, the next `put` fails, the
queue reports the overflow once (the session closes the socket with `SLOW_CONSUMER` 4010)
and discards what it held. Count updates coalesce into one slot (latest wins) that keeps its
place in line: the first update since the last send enqueues a marker; later ones only
replace the slot's bytes. A close is queued like a frame, so the frames before it go out
first; `abort` closes at once, dropping the rest.

All socket IO goes through the writer, one frame at a time, so a slow socket never blocks
the event loop or the fan-out: it only fills its own queue.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("stagecast.edge")

Send = Callable[[bytes], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class _CloseMark:
    code: int
    reason: str


class _CountsMark:
    """Where the coalesced counts slot sits in line."""


_COUNTS = _CountsMark()
_Item = bytes | _CountsMark | _CloseMark


class SendQueue:
    """The outbound side of one socket (see the module docstring).

    `send` writes one frame; `close` sends the close frame; `on_overflow` is called once,
    synchronously, when a `put` finds the queue full. Start the writer with `run()` in a
    task; it returns after the close was sent, after `abort`, or when a send fails.
    """

    def __init__(
        self,
        capacity: int,
        send: Send,
        close: Close,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self._send = send
        self._close = close
        self._on_overflow = on_overflow
        self._items: collections.deque[_Item] = collections.deque()
        self._counts: bytes | None = None
        self._counts_queued = False
        self._wakeup = asyncio.Event()
        self._closing = False
        self._finished = False
        self.overflowed = False
        self.sent = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closing(self) -> bool:
        """True once a close is queued (or the queue was aborted): nothing more goes in."""
        return self._closing

    def put(self, frame: bytes) -> bool:
        """Queue a frame; False if the queue is closing or just overflowed."""
        if self._closing:
            return False
        if len(self._items) >= self.capacity:
            self._overflow()
            return False
        self._items.append(frame)
        self._wakeup.set()
        return True

    def put_counts(self, frame: bytes) -> bool:
        """Replace the coalesced counts frame; it goes out in the place of the first update."""
        if self._closing:
            return False
        self._counts = frame
        if not self._counts_queued:
            if len(self._items) >= self.capacity:
                self._overflow()
                return False
            self._counts_queued = True
            self._items.append(_COUNTS)
            self._wakeup.set()
        return True

    def close_after(self, code: int, reason: str) -> None:
        """Send every queued frame, then close with `code`. Later puts are refused."""
        if self._closing:
            return
        self._closing = True
        self._items.append(_CloseMark(code, reason))
        self._wakeup.set()

    def abort(self, code: int, reason: str) -> None:
        """Drop every queued frame and close with `code` as soon as the writer can."""
        self._items.clear()
        self._counts = None
        self._counts_queued = False
        self._closing = True
        self._items.append(_CloseMark(code, reason))
        self._wakeup.set()

    def _overflow(self) -> None:
        if self.overflowed:
            return
        self.overflowed = True
        if self._on_overflow is not None:
            self._on_overflow()
        if not self._closing:
            self.abort(4010, "SLOW_CONSUMER")

    async def run(self) -> None:
        """The writer: drain the queue into the socket until the close went out."""
        try:
            while not self._finished:
                while not self._items:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                item = self._items.popleft()
                if isinstance(item, _CloseMark):
                    self._finished = True
                    await self._close(item.code, item.reason)
                    return
                if isinstance(item, _CountsMark):
                    data, self._counts = self._counts, None
                    self._counts_queued = False
                    if data is None:
                        continue
                else:
                    data = item
                await self._send(data)
                self.sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us
            log.debug("writer stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self._finished = True
            self._closing = True
            self._items.clear()


__all__ = ["SendQueue"]
