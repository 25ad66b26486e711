"""Forwarder heartbeats as the statekeeper sees them, for tests that wait on forwarders."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.codec import decode
from schemas.media import ForwarderHeartbeat
from schemas.subjects import FORWARDER_HEARTBEAT


class Heartbeats:
    """Every `ForwarderHeartbeat` seen on `stagecast.forwarders.heartbeat`."""

    def __init__(self) -> None:
        self.seen: list[ForwarderHeartbeat] = []

    async def on_beat(self, msg: Msg) -> None:
        beat = decode(msg.data)
        assert isinstance(beat, ForwarderHeartbeat)
        self.seen.append(beat)

    def last(self, forwarder_id: str) -> ForwarderHeartbeat | None:
        mine = [b for b in self.seen if b.forwarder_id == forwarder_id]
        return mine[-1] if mine else None


async def watch_heartbeats(nc: NATS) -> Heartbeats:
    """Start recording heartbeats on `nc` (subscribed once this returns)."""
    beats = Heartbeats()
    await nc.subscribe(FORWARDER_HEARTBEAT, cb=beats.on_beat)
    await nc.flush()
    return beats
