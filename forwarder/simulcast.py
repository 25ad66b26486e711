"""Splicing simulcast layers into one subscriber stream: the per-leg munger. Pure.

A simulcast publisher sends the same video as up to three RTP streams (layers 0, 1, 2 for
rids ``q``, ``h``, ``f``), each with its own SSRC, sequence numbers, RTP timestamps and, for
VP8, picture ids and TL0PICIDX. A subscriber leg carries one layer at a time and must look
like one unbroken stream to the subscriber's decoder. `LayerMunger` does that for one leg:

- it forwards only the current layer, and switches to the target layer only at a keyframe
  of the target layer (the caller asks the publisher for one, rate limited);
- sequence numbers continue across a switch (a `SequenceRewriter` restarted at the switch);
- timestamps continue: the new layer's timestamp is mapped onto the leg's timeline through
  both layers' latest RTCP sender reports (`map_timestamp`), checked against the time that
  passed since the leg's last packet, which is the fallback when there are no reports;
- VP8 picture id and TL0PICIDX continue from the last ones sent (`rtc.vp8`).

Times come in as arguments (`now`, monotonic seconds); nothing here reads a clock. NACKs are
answered from the leg's own send history (the munged bytes), so retransmissions need no
mapping back to layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from forwarder.errors import BadLayer
from rtc.packets import SequenceRewriter
from rtc.vp8 import PICTURE_ID_MODULO, TL0PICIDX_MODULO, Vp8Descriptor, rewrite_vp8_descriptor

LAYER_RIDS = ("q", "h", "f")
"""The rids of layers 0, 1, 2: quarter, half and full resolution."""

_TS_MODULO = 1 << 32
_TS_HALF = 1 << 31
MAX_REPORT_DRIFT = 0.5
"""Seconds a sender-report mapping may differ from the elapsed time before it is ignored."""
DEFAULT_FRAME_RATE = 30.0


def layer_of_rid(rid: str) -> int:
    """The layer index of a simulcast rid (``q`` 0, ``h`` 1, ``f`` 2); `BadLayer` otherwise."""
    try:
        return LAYER_RIDS.index(rid)
    except ValueError:
        raise BadLayer(rid) from None


def _ts_diff(a: int, b: int) -> int:
    """`a - b` for 32-bit RTP timestamps, as a signed number (wrap-around aware)."""
    d = (a - b) % _TS_MODULO
    return d - _TS_MODULO if d >= _TS_HALF else d


@dataclass(frozen=True, slots=True)
class SenderReport:
    """The clock pair of one layer's latest RTCP sender report (RFC 3550 section 6.4.1)."""

    ntp_seconds: float
    """The report's NTP timestamp, in seconds."""
    rtp_timestamp: int


def ntp_to_seconds(ntp: int) -> float:
    """A 64-bit NTP timestamp (32.32 fixed point) in seconds."""
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32)


def map_timestamp(ts: int, source: SenderReport, target: SenderReport, clock_rate: int) -> int:
    """RTP timestamp `ts` of the source layer, on the target layer's timeline.

    Both layers are captured from one clock; their sender reports each tie an RTP timestamp
    to that wall clock, so the source's `ts` is a wall-clock instant that the target layer
    would have stamped as the returned value (mod 2^32).
    """
    seconds = source.ntp_seconds + _ts_diff(ts, source.rtp_timestamp) / clock_rate
    return (target.rtp_timestamp + round((seconds - target.ntp_seconds) * clock_rate)) % (
        _TS_MODULO
    )


@dataclass(frozen=True, slots=True)
class MungedPacket:
    """What a leg sends for one received packet: its own sequence number and timestamp,
    and the payload (VP8 ids rewritten) or the original payload object."""

    sequence_number: int
    timestamp: int
    payload: bytes
    switched: bool
    """This packet is the keyframe the leg switched layers at (or started with)."""


class LayerMunger:
    """One subscriber leg's view of a simulcast track: current and target layer, offsets."""

    __slots__ = (
        "_clock_rate",
        "_current",
        "_frame_ticks",
        "_last_pid",
        "_last_sent_at",
        "_last_tl0",
        "_last_ts",
        "_pid_offset",
        "_rewriter",
        "_target",
        "_tl0_offset",
        "_ts_offset",
        "switches",
    )

    def __init__(
        self,
        *,
        clock_rate: int,
        first_sequence: int,
        first_timestamp: int,
        first_picture_id: int = 0,
        frame_rate: float = DEFAULT_FRAME_RATE,
    ) -> None:
        self._clock_rate = clock_rate
        self._frame_ticks = max(1, round(clock_rate / frame_rate))
        self._rewriter = SequenceRewriter(first_sequence)
        self._current: int | None = None
        self._target: int | None = None
        self._ts_offset = 0
        # The values "sent before the first packet": the first one continues from them.
        self._last_ts = (first_timestamp - self._frame_ticks) % _TS_MODULO
        self._last_sent_at: float | None = None
        self._last_pid = (first_picture_id - 1) % PICTURE_ID_MODULO
        self._last_tl0 = TL0PICIDX_MODULO - 1
        self._pid_offset = 0
        self._tl0_offset = 0
        self.switches = 0

    @property
    def current(self) -> int | None:
        """The layer the leg forwards now; None before its first keyframe."""
        return self._current

    @property
    def target(self) -> int | None:
        """The layer the leg wants; None forwards nothing (paused)."""
        return self._target

    @property
    def needs_keyframe(self) -> bool:
        """The leg waits for a keyframe of its target layer (ask the publisher for one)."""
        return self._target is not None and self._target != self._current

    def set_target(self, layer: int | None) -> bool:
        """Make `layer` the target (None pauses the leg); True if a keyframe is now needed.

        Going back to the current layer before the switch happened cancels the switch.
        """
        if layer is not None and not 0 <= layer < len(LAYER_RIDS):
            raise BadLayer(str(layer))
        self._target = layer
        if layer is None:
            self._current = None  # resume at a keyframe, continuing the sequence
            self._rewriter.restart()
        return self.needs_keyframe

    def munge(
        self,
        layer: int,
        sequence_number: int,
        timestamp: int,
        payload: bytes,
        *,
        keyframe: bool,
        now: float,
        vp8: Vp8Descriptor | None = None,
        reports: dict[int, SenderReport] | None = None,
    ) -> MungedPacket | None:
        """The leg's packet for one received packet of `layer`; None to not send it.

        `keyframe` says whether the packet starts a keyframe; `vp8` is its parsed descriptor
        when the codec is VP8 (parsed once per packet by the caller, shared by all legs);
        `reports` holds each layer's latest sender report.
        """
        switched = False
        if layer != self._current:
            if layer != self._target or not keyframe:
                return None
            self._switch_to(layer, timestamp, now, vp8, reports or {})
            switched = True
        if not payload:  # padding only: never forwarded, leaves no hole when in order
            self._rewriter.skip(sequence_number)
            return None
        seq = self._rewriter.rewrite(sequence_number)
        if seq is None:
            return None
        ts = (timestamp + self._ts_offset) % _TS_MODULO
        if _ts_diff(ts, self._last_ts) > 0:
            self._last_ts = ts
        self._last_sent_at = now
        if vp8 is not None:
            payload = self._rewrite_vp8(payload, vp8)
        return MungedPacket(seq, ts, payload, switched)

    def _switch_to(
        self,
        layer: int,
        timestamp: int,
        now: float,
        vp8: Vp8Descriptor | None,
        reports: dict[int, SenderReport],
    ) -> None:
        elapsed_ticks = self._frame_ticks
        if self._last_sent_at is not None:
            elapsed_ticks = max(1, round((now - self._last_sent_at) * self._clock_rate))
        expected = (self._last_ts + elapsed_ticks) % _TS_MODULO
        out = expected
        old = self._current
        if old is not None and layer in reports and old in reports:
            mapped = (
                map_timestamp(timestamp, reports[layer], reports[old], self._clock_rate)
                + self._ts_offset
            ) % _TS_MODULO
            ahead = _ts_diff(mapped, self._last_ts)
            drift = abs(_ts_diff(mapped, expected)) / self._clock_rate
            if ahead > 0 and drift <= MAX_REPORT_DRIFT:
                out = mapped
        self._ts_offset = (out - timestamp) % _TS_MODULO
        self._rewriter.restart()
        if vp8 is not None:
            if vp8.picture_id is not None:
                self._pid_offset = (self._last_pid + 1 - vp8.picture_id) % PICTURE_ID_MODULO
            if vp8.tl0picidx is not None:
                self._tl0_offset = (self._last_tl0 + 1 - vp8.tl0picidx) % TL0PICIDX_MODULO
        self._current = layer
        self.switches += 1

    def _rewrite_vp8(self, payload: bytes, vp8: Vp8Descriptor) -> bytes:
        pid: int | None = None
        tl0: int | None = None
        if vp8.picture_id is not None:
            pid = (vp8.picture_id + self._pid_offset) % PICTURE_ID_MODULO
            if 0 < (pid - self._last_pid) % PICTURE_ID_MODULO < PICTURE_ID_MODULO // 2:
                self._last_pid = pid
        if vp8.tl0picidx is not None:
            tl0 = (vp8.tl0picidx + self._tl0_offset) % TL0PICIDX_MODULO
            if 0 < (tl0 - self._last_tl0) % TL0PICIDX_MODULO < TL0PICIDX_MODULO // 2:
                self._last_tl0 = tl0
        if pid is None and tl0 is None:
            return payload
        return rewrite_vp8_descriptor(payload, vp8, picture_id=pid, tl0picidx=tl0)
