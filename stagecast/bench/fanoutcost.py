"""The router's fan-out of one packet, in-process: what one `Router.forward` costs.

`python stagecast/bench/fanoutcost.py [LEGS] [PACKETS]` (defaults 100 and 1,500) publishes
one VP8 track on a `forwarder.router.Router` and subscribes LEGS C fan-out legs
(`rtc._fanout.FastLeg`, each with its own libsrtp session), each writing to its own UDP
socket on loopback (read now and then, never by another process: no wake-ups), then
forwards PACKETS packets of 1,152 bytes and prints, per `forward` call after the first
100: `RESULT fan_wall_us_p50 / _p99` (wall time) and `fan_cpu_us_p50` (this process's
CPU time, the helper thread's included). The ICE, DTLS and sender objects a leg's route
is checked against are stand-ins (the C code only compares them).

It imports nothing from `stagecast`, so it measures any tree that has the C fan-out: run
it with ``PYTHONPATH`` set to another checkout (with its extension built) for an A/B, or
under ``valgrind --tool=callgrind`` with two PACKETS values for the user-space
instructions per packet, which the machine's other load does not change.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time

import pylibsrtp

from forwarder.router import Router
from rtc import fanout
from rtc._fanout import FastLeg
from rtc.direct_send import srtp_pointers
from rtc.packets import CodecInfo, MediaPacket, RtpWriter

KEY = bytes(range(30))
CONNECTED = object()
"""Stands for aiortc's DTLS state CONNECTED."""
VP8 = CodecInfo(kind="video", mime_type="video/VP8", clock_rate=90000)
KEYFRAME = b"\x10\x00\x9d\x01\x2a" + bytes(1100)
PAYLOAD = b"\x00\x00" + bytes(1150)
WARMUP = 100
DRAIN_EVERY = 50


class _Sender:
    _enabled = True


class _Dtls:
    def __init__(self) -> None:
        self._state = CONNECTED


class _Leg:
    """A router leg with a bound C fan-out and stand-ins for what its route is checked
    against; its Python path must never be taken."""

    def __init__(self, index: int, sock: socket.socket, to: tuple[str, int]) -> None:
        self.leg_id = f"leg{index}"
        pair = object()
        self.srtp = pylibsrtp.Session(
            pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        )
        self.fast = FastLeg([None] * 128)
        ssrc = 1000 + index
        writer = RtpWriter(
            payload_type=96, ssrc=ssrc, mid="0", mid_id=9, abs_send_time_id=3, audio_level_id=None
        )
        mid_element, abs_send_time_id, audio_level_id = writer.extension_layout
        self.fast.configure(
            payload_type=96,
            ssrc=ssrc,
            mid_element=mid_element,
            abs_send_time_id=abs_send_time_id,
            audio_level_id=audio_level_id,
        )
        protect, context = srtp_pointers(self.srtp)
        self.fast.bind(
            session=self.srtp,
            protect=protect,
            context=context,
            sock=sock,
            address=to,
            queued=lambda: 0,
            fallback=lambda data, address: None,
            nominated={1: pair},
            component=1,
            pair=pair,
            dtls=_Dtls(),
            connected=CONNECTED,
            sender=_Sender(),
        )

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        raise AssertionError("a bound leg took the Python path")


async def measure(legs: int, packets: int) -> dict[str, float]:
    """Forward `packets` packets to `legs` legs; per-call wall and CPU µs (after warm-up)."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    receivers = []
    for _ in range(legs):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        receivers.append(receiver)
    router = Router(first_sequence=lambda: 1000)
    router.publish("t", VP8, request_keyframe=lambda: None)
    for index, receiver in enumerate(receivers):
        router.subscribe("t", _Leg(index, sender, receiver.getsockname()))
    wall: list[float] = []
    cpu: list[float] = []
    for seq in range(1, packets + 1):
        packet = MediaPacket(
            sequence_number=seq & 0xFFFF,
            timestamp=seq * 300,
            marker=0,
            payload=KEYFRAME if seq == 1 else PAYLOAD,
            ssrc=42,
            payload_type=96,
        )
        wall0, cpu0 = time.perf_counter_ns(), time.process_time_ns()
        sent = await router.forward("t", packet)
        wall1, cpu1 = time.perf_counter_ns(), time.process_time_ns()
        if sent != legs:
            raise RuntimeError(f"packet {seq} went to {sent} of {legs} legs")
        if seq > WARMUP:
            wall.append((wall1 - wall0) / 1e3)
            cpu.append((cpu1 - cpu0) / 1e3)
        if seq % DRAIN_EVERY == 0:  # so that no receiving socket fills up
            for receiver in receivers:
                try:
                    while receiver.recv(2048):
                        pass
                except BlockingIOError:
                    pass
    for sock in [sender, *receivers]:
        sock.close()
    wall.sort()
    return {
        "fan_wall_us_p50": statistics.median(wall) if wall else 0.0,
        "fan_wall_us_p99": wall[int(0.99 * (len(wall) - 1))] if wall else 0.0,
        "fan_cpu_us_p50": statistics.median(cpu) if cpu else 0.0,
        "fan_threads": float(getattr(fanout, "threads", lambda: 1)()),
    }


def main(argv: list[str]) -> None:
    legs = int(argv[0]) if argv else 100
    packets = int(argv[1]) if len(argv) > 1 else 1500
    for name, value in asyncio.run(measure(legs, packets)).items():
        print(f"RESULT {name} {value:.1f} {'x' if name == 'fan_threads' else 'us'}")


if __name__ == "__main__":
    main(sys.argv[1:])
