"""The state of a service's NATS link: one log line per change, counters, and since when.

nats-py reports a reconnecting client through callbacks: `disconnected_cb` once, then
`error_cb` for every failed attempt (about two a second), then `reconnected_cb`. Logged as
they come, an outage of a minute is a hundred tracebacks. `NatsLink` turns them into three
lines, `lost`, `retrying` and `back` (with how long it was away and how many attempts
failed), and keeps the counts for metrics.

It also answers the question a liveness judge must ask first: has *my own* link been up
long enough to tell a silent peer from a silent network? A statekeeper that judged edges
while its own connection was down would declare every edge lost (see `connected_for`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any


class LinkState(enum.Enum):
    CONNECTED = "connected"
    LOST = "lost"
    """Disconnected; no reconnect attempt has failed yet."""
    RETRYING = "retrying"
    """Disconnected, and at least one reconnect attempt failed."""
    CLOSED = "closed"


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class NatsLink:
    """Callbacks for `nats.connect` that track one connection (see the module docstring)."""

    def __init__(
        self, name: str, logger: logging.Logger, clock: Callable[[], int] = monotonic_ms
    ) -> None:
        self.name = name
        self.log = logger
        self.clock = clock
        self.state = LinkState.CONNECTED
        self.up_since = clock()
        """When the link last became connected (`clock` ms)."""
        self.down_since = 0
        self.disconnects = 0
        self.reconnects = 0
        self.failed_attempts = 0
        """Reconnect attempts that failed, over the link's life."""
        self.errors = 0
        self.on_back: Callable[[], Awaitable[None]] | None = None
        """Run (as a task) each time the link comes back."""
        self._attempts_this_outage = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ queries

    @property
    def connected(self) -> bool:
        return self.state is LinkState.CONNECTED

    def connected_for(self) -> int:
        """Milliseconds the link has been up without a break (0 while it is down)."""
        return self.clock() - self.up_since if self.connected else 0

    def connect_options(self) -> dict[str, Any]:
        """The callback keyword arguments of `nats.connect`."""
        return {
            "error_cb": self.on_error,
            "disconnected_cb": self.on_disconnected,
            "reconnected_cb": self.on_reconnected,
            "closed_cb": self.on_closed,
        }

    # ------------------------------------------------------------------ callbacks

    async def on_disconnected(self) -> None:
        if self.state is not LinkState.CONNECTED:
            return
        self.state = LinkState.LOST
        self.down_since = self.clock()
        self.disconnects += 1
        self._attempts_this_outage = 0
        self.log.warning("%s: NATS link lost; reconnecting", self.name)

    async def on_reconnected(self) -> None:
        if self.state is LinkState.CONNECTED:
            return
        away = (self.clock() - self.down_since) / 1000
        self.state = LinkState.CONNECTED
        self.up_since = self.clock()
        self.reconnects += 1
        self.log.warning(
            "%s: NATS link back after %.1f s (%d failed attempts)",
            self.name,
            away,
            self._attempts_this_outage,
        )
        if self.on_back is not None:
            task = asyncio.create_task(self._run_on_back(self.on_back))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_on_back(self, hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except Exception:
            self.log.exception("%s: what runs when the NATS link is back failed", self.name)

    async def on_closed(self) -> None:
        self.state = LinkState.CLOSED

    async def on_error(self, exc: Exception) -> None:
        self.errors += 1
        if self.state is LinkState.CONNECTED:
            # An error on a live link (a permissions violation, a slow consumer...): rare
            # enough to say each time, without the traceback.
            self.log.warning("%s: NATS: %s: %s", self.name, type(exc).__name__, exc)
            return
        self.failed_attempts += 1
        self._attempts_this_outage += 1
        if self.state is LinkState.LOST:
            self.state = LinkState.RETRYING
            self.log.warning(
                "%s: NATS reconnect failing (%s: %s); retrying quietly",
                self.name,
                type(exc).__name__,
                exc,
            )


__all__ = ["LinkState", "NatsLink", "monotonic_ms"]
