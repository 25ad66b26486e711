"""A room spanning forwarders: a track relayed from its publisher's forwarder to another.

Both ends speak NATS core (schemas.media): the downstream forwarder asks the origin with
`RelayStart` (request/reply, idempotent) and the origin then publishes every packet of the
track as a `RelayPacket` on ``stagecast.relay.<downstream>.<track>``.

- Upstream, a `RelayLeg` is one more router leg of the track: it starts at a keyframe,
  skips nothing but what a subscriber leg would skip, and carries the leg's own gap-free
  sequence numbers (so a mute at the origin leaves no hole downstream). It is a lease:
  the downstream renews it with `RelayStart` every `RELAY_REFRESH_S`; the origin drops a
  relay not renewed for `RELAY_LEASE_S` (a downstream forwarder that died).
- Downstream, a `RelayIn` subscribes to the relay subject, publishes the track in its
  own router (`Forwarder.add_relayed_track`) once the origin accepted, forwards each
  packet, sends keyframe requests upstream (`RelayKeyframeRequest`), and retries the start
  with a backoff while the origin does not have the track yet (its publisher's offer may
  not have arrived), giving up after `give_up_after` seconds.

NATS core is at-most-once: a relayed packet lost between forwarders is not repaired
here (each subscriber leg still repairs its own loss with NACK/RTX).

The origin's side is `forwarder.relay_out`, the downstream side `forwarder.relay_in`; this
module holds what both agree on: the timings of the lease and the packets' wire form.
"""

from __future__ import annotations

from rtc.packets import CodecInfo, MediaPacket
from schemas.media import RelayCodec, RelayPacket

RELAY_REFRESH_S = 5.0
"""How often a downstream forwarder renews each relay it receives."""
RELAY_LEASE_S = 20.0
"""How long an origin keeps relaying without a renewal (four missed renewals)."""


def codec_to_wire(codec: CodecInfo) -> RelayCodec:
    return RelayCodec(
        kind=codec.kind,
        mime_type=codec.mime_type,
        clock_rate=codec.clock_rate,
        channels=codec.channels,
        parameters=dict(codec.parameters),
    )


def codec_from_wire(codec: RelayCodec) -> CodecInfo:
    return CodecInfo(
        kind=codec.kind,
        mime_type=codec.mime_type,
        clock_rate=codec.clock_rate,
        channels=codec.channels,
        parameters=tuple(sorted(codec.parameters.items())),
    )


def packet_to_wire(track_sid: str, packet: MediaPacket, sequence_number: int) -> RelayPacket:
    level = packet.audio_level
    return RelayPacket(
        track_sid=track_sid,
        sequence_number=sequence_number,
        timestamp=packet.timestamp,
        marker=packet.marker,
        payload=packet.payload,
        ssrc=packet.ssrc,
        payload_type=packet.payload_type,
        voice_activity=None if level is None else level[0],
        audio_level=None if level is None else level[1],
        padding_size=packet.padding_size,
        red=packet.red,
    )


def packet_from_wire(packet: RelayPacket) -> MediaPacket:
    level = packet.audio_level
    return MediaPacket(
        sequence_number=packet.sequence_number & 0xFFFF,
        timestamp=packet.timestamp & 0xFFFFFFFF,
        marker=1 if packet.marker else 0,
        payload=packet.payload,
        ssrc=packet.ssrc & 0xFFFFFFFF,
        payload_type=packet.payload_type & 0x7F,
        audio_level=None if level is None else (bool(packet.voice_activity), level & 0x7F),
        padding_size=max(packet.padding_size, 0),
        red=packet.red,
    )
