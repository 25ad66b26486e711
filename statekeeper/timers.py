"""The statekeeper's own log writes: the fold's timers, and events it appends itself.

A timer the fold asks for (`TimerDue`) is armed on the event loop and, when due, appended
to the room log under a key that names it, so an append repeated after a restart or by a
second statekeeper is deduplicated by JetStream. The same retried append carries the
events the statekeeper decides outside the fold (an edge lost, a forwarder assigned).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from roomlog.seam import RoomLogPort
from schemas.log import GraceExpired, LogEvent, RoomTimedOut
from statekeeper.errors import LeaseLost
from statekeeper.leases import Fence
from statekeeper.state import Room

log = logging.getLogger("stagecast.statekeeper")

APPEND_ATTEMPTS = 10
"""How often a statekeeper-written event is tried before it is given up (logged)."""

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Timers:
    """Armed timers by key, and the retried appends of the statekeeper's own events."""

    def __init__(
        self,
        room_log: RoomLogPort,
        clock: Callable[[], int],
        spawn: Spawn,
        fence: Fence | None = None,
    ) -> None:
        self._room_log = room_log
        self._fence = fence
        self._clock = clock
        self._spawn = spawn
        self._handles: dict[str, asyncio.TimerHandle] = {}
        self._stopped = False

    def arm(self, event: LogEvent) -> None:
        """Append `event` at wall time `event.at` (once per key, however often armed)."""
        key = timer_key(event)
        if key in self._handles or self._stopped:
            return
        delay = max(0.0, (event.at - self._clock()) / 1000)
        loop = asyncio.get_running_loop()
        self._handles[key] = loop.call_later(delay, self._fire, key, event)

    def rearm(self, room: Room) -> None:
        """After recovery, arm the timers the state implies (their keys dedup the log)."""
        for session in room.sessions.values():
            if not session.connected:
                due = room.departure_timeout * 1000 + session.disconnected_at
                self.arm(
                    GraceExpired(
                        room_id=room.id,
                        at=due,
                        sid=session.sid,
                        disconnected_at=session.disconnected_at,
                    )
                )
        if not room.sessions and room.empty_since:
            self.arm(
                RoomTimedOut(
                    room_id=room.id,
                    at=room.closes_at,
                    room_sid=room.sid,
                    empty_since=room.empty_since,
                )
            )

    def append_soon(self, key: str, event: LogEvent) -> None:
        """Append `event` now, in the background, retrying while NATS is away (bounded)."""
        self._spawn(self._append(key, event))

    def stop(self) -> None:
        """Cancel every armed timer; none is armed or fires afterwards. Idempotent."""
        self._stopped = True
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _fire(self, key: str, event: LogEvent) -> None:
        self._handles.pop(key, None)
        if not self._stopped:
            self.append_soon(key, event)

    async def _append(self, key: str, event: LogEvent) -> None:
        for attempt in range(APPEND_ATTEMPTS):
            if self._stopped:
                return
            try:
                if self._fence is not None:
                    self._fence.check()
                await self._room_log.append(event, msg_id=key)
                return
            except LeaseLost:
                log.info("timer %s not appended: the partition's lease is lost", key)
                return
            except Exception as exc:  # NATS down: retry with backoff, bounded
                log.warning("timer %s not appended (%s), retrying", key, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))


def timer_key(event: LogEvent) -> str:
    """The dedup key a timer event is appended under (equal for the same decision)."""
    if isinstance(event, GraceExpired):
        return f"grace:{event.room_id}:{event.sid}:{event.disconnected_at}"
    if isinstance(event, RoomTimedOut):
        return f"room-timeout:{event.room_id}:{event.room_sid}:{event.empty_since}"
    return f"timer:{event.TYPE}:{event.room_id}:{event.at}"
