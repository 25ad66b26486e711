"""`forwarder.relay_out.OutgoingRelays`: a relay dropped and made again continues its
sequence, even across one that was dropped before it sent anything."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from forwarder.relay_out import OutgoingRelays
from forwarder.router import Leg, Router


class RecordingRouter(Router):
    """Records where each relay leg was told to start (and routes nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.firsts: list[int | None] = []

    def subscribe(self, track_id: str, leg: Leg, *, first_sequence: int | None = None) -> None:
        self.firsts.append(first_sequence)

    def unsubscribe(self, track_id: str, leg_id: str) -> bool:
        return True


def test_a_relay_that_sent_nothing_keeps_the_sequence_of_the_one_before() -> None:
    router = RecordingRouter()
    relays = OutgoingRelays(NATS(), router, lease=0.3)
    first = relays.renew("TR_cam", "FW_B", now=0.0)
    first.last_sequence = 0xFFFF  # it sent packets, up to the wrap
    assert relays.expire(1.0) == [("TR_cam", "FW_B")]
    relays.renew("TR_cam", "FW_B", now=1.0)  # made again: continues after the wrap
    # dropped again before its first packet (it waited for a keyframe) ...
    assert relays.expire(2.0) == [("TR_cam", "FW_B")]
    third = relays.renew("TR_cam", "FW_B", now=2.0)
    # ... so the next one continues where the first left off, not at a random sequence
    assert router.firsts == [None, 0, 0]
    third.last_sequence = 41
    relays.expire(3.0)
    relays.renew("TR_cam", "FW_B", now=3.0)
    assert router.firsts[-1] == 42
    relays.forget_track("TR_cam")  # unpublished: nothing to continue
    relays.renew("TR_cam", "FW_B", now=4.0)
    assert router.firsts[-1] is None
