"""Ingress (WHIP) connections: when one fails or never connects, its edge is told.

A WHIP client has no signaling socket, so nothing but its peer connection says it is
still there. `IngressWatch` follows each ingress connection's state: one that fails or
closes, or is not connected `connect_timeout` seconds after its answer, ends with an
`IngressEnded` on the session's subject (its edge then takes it out of the room). A
session the forwarder drops itself is `forget`-ed first, so its closing says nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS

from forwarder.errors import ForwarderError
from forwarder.served import SessionKey
from schemas.codec import encode
from schemas.media import IngressEnded

log = logging.getLogger("stagecast.forwarder")

INGRESS_CONNECT_TIMEOUT_S = 30.0
"""How long an answered WHIP connection may take to connect (ICE and DTLS)."""


def ingress_key(sid: str) -> str:
    """The publisher key of a session's ingress connection (one per session)."""
    return f"ingress/{sid}"


class IngressWatch:
    """The ingress connections of one forwarder and their ends (the module docstring)."""

    def __init__(self, nc: NATS, connect_timeout: float = INGRESS_CONNECT_TIMEOUT_S) -> None:
        self.nc = nc
        self.connect_timeout = connect_timeout
        self._timers: dict[SessionKey, asyncio.TimerHandle] = {}
        self._subjects: dict[SessionKey, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.ended = 0
        """Ingress sessions ended by their connection (failed, closed, or too slow)."""

    def watch(
        self, room_id: str, sid: str, subject: str, state: Callable[[], str]
    ) -> Callable[[str], None]:
        """Start watching a new ingress connection; returns its state-change callback."""
        key = (room_id, sid)
        self.forget(key)
        self._subjects[key] = subject

        def on_timeout() -> None:
            self._timers.pop(key, None)
            try:
                current = state()
            except ForwarderError:  # the connection is gone already
                current = "closed"
            if current != "connected":
                self._end(key, f"not connected after {self.connect_timeout:.0f} s ({current})")

        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(self.connect_timeout, on_timeout)

        def on_state(current: str) -> None:
            if current == "connected":
                timer = self._timers.pop(key, None)
                if timer is not None:
                    timer.cancel()
            elif current in ("failed", "closed"):
                self._end(key, f"the connection {current}")

        return on_state

    def forget(self, key: SessionKey) -> None:
        """Stop watching a session (it is being dropped, or gets a new connection)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._subjects.pop(key, None)

    def close(self) -> None:
        for key in list(self._timers):
            self.forget(key)
        self._subjects.clear()

    def _end(self, key: SessionKey, reason: str) -> None:
        subject = self._subjects.get(key)
        self.forget(key)
        if subject is None:
            return
        self.ended += 1
        log.info("ingress session %s ended: %s", key[1], reason)
        message = IngressEnded(room_id=key[0], sid=key[1], reason=reason)
        task = asyncio.create_task(self._send(subject, encode(message)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, subject: str, data: bytes) -> None:
        try:
            await self.nc.publish(subject, data)
        except Exception as exc:  # the edge's own liveness still ends it with the edge
            log.warning("IngressEnded on %s not sent: %r", subject, exc)
