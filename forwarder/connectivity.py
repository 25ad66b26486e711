"""Say when a media connection does not connect: a peer connection the forwarder answered
or offered that is still not `connected` after a while is logged once, with its ICE state,
so an operator sees a blocked UDP port or a client that never sent its answer."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiortc import RTCPeerConnection

log = logging.getLogger("stagecast.forwarder")

CONNECT_WARNING_AFTER: Final = 10.0
"""Seconds a new connection may take to connect before the forwarder says so."""


def watch_connection(
    pc: RTCPeerConnection, what: str, *, after: float = CONNECT_WARNING_AFTER
) -> None:
    """Log a warning if `pc` is not connected `after` seconds from now, and when it fails.

    `what` names the connection in the log (``publisher PA_x``, ``subscriber PA_y``). The
    timer goes when the connection connects or closes; nothing here closes anything.
    """
    loop = asyncio.get_running_loop()

    def check() -> None:
        if pc.connectionState not in ("connected", "closed"):
            log.warning(
                "%s: media connection still %s after %.0f s (ICE %s, gathering %s): "
                "is UDP to this forwarder blocked, or did the client never answer?",
                what,
                pc.connectionState,
                after,
                pc.iceConnectionState,
                pc.iceGatheringState,
            )

    timer = loop.call_later(after, check)

    @pc.on("connectionstatechange")
    def on_state() -> None:
        state = pc.connectionState
        if state in ("connected", "closed"):
            timer.cancel()
        if state == "failed":
            timer.cancel()
            log.warning("%s: media connection failed (ICE %s)", what, pc.iceConnectionState)
        else:
            log.debug("%s: media connection %s", what, state)
