"""The origin's side of a relay: a track's packets published to a downstream forwarder.

A `RelayLeg` is one more router leg of the track, sending each packet as a `RelayPacket`
on ``stagecast.relay.<downstream>.<track>``; `OutgoingRelays` holds them as leases the
downstream renews with `RelayStart` (the protocol is described in `forwarder.relay`).
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from forwarder.relay import RELAY_LEASE_S, packet_to_wire
from forwarder.router import Router
from rtc.packets import MediaPacket, seq_newer
from schemas.codec import encode
from schemas.subjects import relay

log = logging.getLogger("stagecast.forwarder.relay")


class RelayLeg:
    """The origin's side: a router leg that publishes each packet to one forwarder."""

    def __init__(
        self,
        nc: NATS,
        *,
        track_sid: str,
        to_forwarder: str,
        now: float,
        first_sequence: int | None = None,
    ) -> None:
        self._nc = nc
        self.track_sid = track_sid
        self.to_forwarder = to_forwarder
        self.subject = relay(to_forwarder, track_sid)  # ValueError for an unusable id
        self.renewed_at = now
        self.packets_sent = 0
        self.last_sequence: int | None = None
        self.first_sequence = first_sequence
        """Where the relay this one replaces left off (None: a new sequence)."""

    @property
    def leg_id(self) -> str:
        return f"relay>{self.to_forwarder}"

    @property
    def next_sequence(self) -> int | None:
        """Where a relay re-established to the same forwarder continues its sequence: after
        its last packet, or, if it sent none (it waited for a keyframe), where the relay
        before it left off."""
        if self.last_sequence is None:
            return self.first_sequence
        return (self.last_sequence + 1) & 0xFFFF

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        data = encode(packet_to_wire(self.track_sid, packet, sequence_number))
        try:
            await self._nc.publish(self.subject, data)
        except Exception as exc:  # closed or reconnecting past its buffer
            log.debug("relay %s: publish failed: %s", self.subject, exc)
            return False
        self.packets_sent += 1
        last = self.last_sequence
        if last is None or seq_newer(sequence_number, last):
            self.last_sequence = sequence_number
        return True


RelayKey = tuple[str, str]
"""(track sid, downstream forwarder id)"""


class OutgoingRelays:
    """The origin's relays: which of its tracks go to which forwarders, as leases.

    Each relay is a `RelayLeg` subscribed to the track in the router. `renew` (on every
    `RelayStart`) makes or renews one; `expire` drops those not renewed within `lease`
    seconds and remembers where their sequence stopped, so a relay re-established to the
    same forwarder continues it (the downstream legs never see a jump).
    """

    def __init__(self, nc: NATS, router: Router, *, lease: float = RELAY_LEASE_S) -> None:
        self._nc = nc
        self._router = router
        self._lease = lease
        self._legs: dict[RelayKey, RelayLeg] = {}
        self._resume: dict[RelayKey, int] = {}

    @property
    def keys(self) -> list[RelayKey]:
        return list(self._legs)

    def renew(self, track_sid: str, to_forwarder: str, now: float) -> RelayLeg:
        """Relay `track_sid` (published in the router) to `to_forwarder`; idempotent."""
        key = (track_sid, to_forwarder)
        leg = self._legs.get(key)
        if leg is None:
            first = self._resume.pop(key, None)
            leg = RelayLeg(
                self._nc,
                track_sid=track_sid,
                to_forwarder=to_forwarder,
                now=now,
                first_sequence=first,
            )
            self._router.subscribe(track_sid, leg, first_sequence=first)
            self._legs[key] = leg
            log.info("relaying %s to %s", track_sid, to_forwarder)
        leg.renewed_at = now
        return leg

    def stop(self, key: RelayKey, *, resumable: bool = False) -> bool:
        """Stop one relay; False if there was none."""
        leg = self._legs.pop(key, None)
        if leg is None:
            return False
        self._router.unsubscribe(key[0], leg.leg_id)
        if resumable and leg.next_sequence is not None:
            self._resume[key] = leg.next_sequence  # kept across a relay that sent nothing
        log.info("stopped relaying %s to %s", *key)
        return True

    def expire(self, now: float) -> list[RelayKey]:
        """Drop the relays not renewed within the lease (their downstream died)."""
        expired = [key for key, leg in self._legs.items() if leg.renewed_at < now - self._lease]
        for key in expired:
            log.warning("the relay of %s to %s was not renewed; dropping it", *key)
            self.stop(key, resumable=True)
        return expired

    def forget_track(self, track_sid: str) -> None:
        """The track was unpublished (the router dropped its legs): forget its relays."""
        for table in (self._legs, self._resume):
            for key in [key for key in table if key[0] == track_sid]:
                del table[key]

    def clear(self) -> None:
        self._legs.clear()
        self._resume.clear()
