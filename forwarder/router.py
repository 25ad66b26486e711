"""Which packets go where: published tracks, their subscriber legs, mutes and keyframes.

The router is the forwarder's pure-ish core. It knows nothing of aiortc: a track is an id
plus its `CodecInfo` and a callable that asks the publisher for a keyframe; a leg is
anything with `send(packet, sequence_number)`. It keeps, per leg, a `SequenceRewriter`
(so mutes and a late start leave no holes) and whether the leg still waits for a keyframe
(a video leg starts at a keyframe, never in the middle of a picture).

A track's source may change under its legs: a publisher's replaced peer connection (ICE
restart) or a relay re-established after its origin republished. Either comes with a new
SSRC, or with `replace_source`; every leg then restarts at the next keyframe, continuing
its own sequence, so subscribers never see the jump.

A leg that has a C fan-out (`fast`, a `rtc.fanout.FastLeg`: a subscriber leg's outbound
stream once the C extension is built) is sent to with the packet's other such legs in one
call; the legs it hands back (route not settled, loss injection, RED) go through their
`send` as any other leg. With the C extension the rewriters are C ones too, and the legs
not waiting for a keyframe take the whole per-leg step, rewriting included, in that one
call (`rtc.fanout.forward`); the track keeps that list of legs (`_Split`) until a
subscription or a leg's keyframe wait changes.

Keyframe requests to a publisher are rate limited per track: at most one per
`keyframe_interval` seconds. A request inside the window is not lost but coalesced into one
sent when the window ends, so a new subscriber (which always asks for one) gets its
keyframe promptly without a crowd of joiners flooding the publisher with PLIs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from forwarder.errors import DuplicateTrack, TrackNotFound
from forwarder.simulcast_track import LayerSource, SimulcastTrack
from rtc import fanout as c_fanout
from rtc.packets import (
    CodecInfo,
    DuplicateFilter,
    MediaPacket,
    SequenceRewriter,
    is_keyframe_start,
)

logger = logging.getLogger(__name__)

DEFAULT_KEYFRAME_INTERVAL = 0.5
"""Seconds between two keyframe requests sent upstream for one track."""


class Leg(Protocol):
    """One subscriber's outgoing stream of one track."""

    @property
    def leg_id(self) -> str: ...

    async def send(self, packet: MediaPacket, sequence_number: int) -> bool:
        """Send `packet` as `sequence_number` of this leg; False if it was not sent."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Cancellable]
"""`schedule(delay_s, callback)`: run `callback` later; the handle cancels it."""


def _loop_schedule(delay: float, callback: Callable[[], None]) -> Cancellable:
    return asyncio.get_running_loop().call_later(delay, callback)


def _random_first_sequence() -> int:
    # The lower half of the range, as aiortc does, so SRTP never sees an early wrap.
    return random.randrange(0x8000)


@dataclass(frozen=True, slots=True)
class TrackStats:
    """Counters of one track since it was published."""

    packets_received: int
    packets_forwarded: int
    """Packets sent, summed over legs (one packet to 10 legs counts 10)."""
    packets_dropped_muted: int
    packets_repeated: int
    """Packets received twice (retransmissions, RTX probes), forwarded once."""
    keyframe_requests: int
    """Keyframe requests actually sent upstream (after rate limiting)."""
    subscribers: int
    muted: bool


class _Subscription:
    __slots__ = ("awaiting_keyframe", "c_rewriter", "fast", "leg", "rewriter")

    def __init__(
        self,
        leg: Leg,
        rewriter: SequenceRewriter | c_fanout.Rewriter,
        awaiting_keyframe: bool,
    ) -> None:
        self.leg = leg
        self.rewriter = rewriter
        self.awaiting_keyframe = awaiting_keyframe
        self.fast: c_fanout.FastLeg | None = getattr(leg, "fast", None)
        """The leg's C fan-out, if it has one (see the module's docstring)."""
        self.c_rewriter = c_fanout.c_rewriter(rewriter) if self.fast is not None else None
        """The rewriter, when it is the C one and the leg has a C fan-out."""


class _Split:
    """A track's subscriptions as `Router.forward` takes them: those whose per-leg step
    runs in C (`subs`, with their `rewriters` and `legs`: a C fan-out, a C rewriter, no
    keyframe awaited) and the `rest`."""

    __slots__ = ("legs", "rest", "rewriters", "subs")

    def __init__(self, subscriptions: list[_Subscription]) -> None:
        self.subs: list[_Subscription] = []
        self.rewriters: list[c_fanout.Rewriter] = []
        self.legs: list[c_fanout.FastLeg] = []
        self.rest: list[_Subscription] = []
        for sub in subscriptions:
            if sub.c_rewriter is not None and sub.fast is not None and not sub.awaiting_keyframe:
                self.subs.append(sub)
                self.rewriters.append(sub.c_rewriter)
                self.legs.append(sub.fast)
            else:
                self.rest.append(sub)


class _Track:
    __slots__ = (
        "codec",
        "dropped_muted",
        "duplicates",
        "forwarded",
        "keyframe_requests",
        "last_keyframe_request",
        "muted",
        "pending_keyframe",
        "received",
        "repeated",
        "request_keyframe",
        "simulcast",
        "split",
        "ssrc",
        "subscriptions",
        "track_id",
    )

    def __init__(
        self, track_id: str, codec: CodecInfo, request_keyframe: Callable[[], None]
    ) -> None:
        self.track_id = track_id
        self.codec = codec
        self.request_keyframe = request_keyframe
        self.muted = False
        self.ssrc: int | None = None
        self.subscriptions: dict[str, _Subscription] = {}
        self.last_keyframe_request: float | None = None
        self.pending_keyframe: Cancellable | None = None
        self.received = 0
        self.forwarded = 0
        self.dropped_muted = 0
        self.repeated = 0
        self.duplicates = DuplicateFilter()
        self.keyframe_requests = 0
        self.simulcast: SimulcastTrack | None = None
        """Set for a simulcast video track: its layers are forwarded there."""
        self.split: _Split | None = None
        """The subscriptions as `forward` takes them (None: to make again)."""

    @property
    def is_video(self) -> bool:
        return self.codec.kind == "video"


class Router:
    """Maps published tracks to subscriber legs and forwards each packet to its legs."""

    def __init__(
        self,
        *,
        keyframe_interval: float = DEFAULT_KEYFRAME_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule = _loop_schedule,
        first_sequence: Callable[[], int] = _random_first_sequence,
    ) -> None:
        self._keyframe_interval = keyframe_interval
        self._clock = clock
        self._schedule = schedule
        self._first_sequence = first_sequence
        self._tracks: dict[str, _Track] = {}
        self._forwarded_total = 0
        self.send_stamps: array[int] | None = None
        """When set, gets CLOCK_MONOTONIC ns after each C fan-out send (the media
        benchmark's latency probe; a leg's own `send` is stamped by its wrapper)."""

    @property
    def track_ids(self) -> list[str]:
        return list(self._tracks)

    @property
    def packets_forwarded(self) -> int:
        """Packets sent on any leg since the router was made (tracks gone included)."""
        return self._forwarded_total

    @property
    def leg_count(self) -> int:
        """Subscriptions over every track (a leg subscribed to two tracks counts twice)."""
        return sum(len(track.subscriptions) for track in self._tracks.values())

    def codec(self, track_id: str) -> CodecInfo:
        return self._track(track_id).codec

    def legs(self, track_id: str) -> list[str]:
        """Ids of the legs subscribed to `track_id`."""
        return list(self._track(track_id).subscriptions)

    def publish(
        self,
        track_id: str,
        codec: CodecInfo,
        *,
        request_keyframe: Callable[[], None],
        simulcast: LayerSource | None = None,
    ) -> None:
        """Add a track; `request_keyframe()` asks its publisher for one (PLI).

        `simulcast` (video only) makes it a simulcast track: each leg gets one of the
        layers its packets carry (`MediaPacket.rid`), chosen per leg.
        """
        if track_id in self._tracks:
            raise DuplicateTrack(track_id)
        track = self._tracks[track_id] = _Track(track_id, codec, request_keyframe)
        if simulcast is not None and track.is_video:
            track.simulcast = SimulcastTrack(
                codec, simulcast, keyframe_interval=self._keyframe_interval, clock=self._clock
            )

    def simulcast(self, track_id: str) -> SimulcastTrack | None:
        """The layer state of a simulcast track (None for a single-layer one)."""
        return self._track(track_id).simulcast

    def unpublish(self, track_id: str) -> list[str]:
        """Remove a track and all its subscriptions; returns the ids of the legs dropped."""
        track = self._tracks.pop(track_id, None)
        if track is None:
            return []
        if track.pending_keyframe is not None:
            track.pending_keyframe.cancel()
            track.pending_keyframe = None
        legs = list(track.subscriptions)
        track.subscriptions.clear()
        return legs

    def subscribe(self, track_id: str, leg: Leg, *, first_sequence: int | None = None) -> None:
        """Start forwarding `track_id` to `leg` (a video leg starts at the next keyframe).

        `first_sequence` continues a sequence a former leg to the same place ended (a
        relay re-established); by default the leg starts at a random one.
        """
        track = self._track(track_id)
        first = self._first_sequence() if first_sequence is None else first_sequence
        track.subscriptions[leg.leg_id] = _Subscription(
            leg, c_fanout.new_rewriter(first), awaiting_keyframe=track.is_video
        )
        track.split = None
        if track.simulcast is not None:
            track.simulcast.subscribe(leg.leg_id, leg, first_sequence=first, now=self._clock())
            return
        if track.is_video and not track.muted:
            self.request_keyframe(track_id)

    def unsubscribe(self, track_id: str, leg_id: str) -> bool:
        """Stop forwarding `track_id` to the leg; False if it was not subscribed."""
        track = self._tracks.get(track_id)
        if track is None:
            return False
        if track.simulcast is not None:
            track.simulcast.unsubscribe(leg_id)
        track.split = None
        return track.subscriptions.pop(leg_id, None) is not None

    def remove_leg(self, leg_id: str) -> int:
        """Unsubscribe `leg_id` from every track (a subscriber left); returns how many."""
        return sum(self.unsubscribe(track_id, leg_id) for track_id in list(self._tracks))

    def set_muted(self, track_id: str, muted: bool) -> None:
        """Mute (forward nothing) or unmute a track; legs resume without a sequence gap."""
        track = self._track(track_id)
        if muted == track.muted:
            return
        track.muted = muted
        if not muted:
            self._restart_legs(track)

    def replace_source(
        self,
        track_id: str,
        request_keyframe: Callable[[], None],
        *,
        simulcast: LayerSource | None = None,
    ) -> None:
        """The track now comes from another publisher connection; its legs stay attached.

        `request_keyframe` (and `simulcast`, for a simulcast track) replaces the former
        one. Every leg restarts at the new source's next keyframe, continuing its own
        sequence numbers.
        """
        track = self._track(track_id)
        track.request_keyframe = request_keyframe
        track.ssrc = None
        if track.simulcast is not None and simulcast is not None:
            track.simulcast.source = simulcast
        self._restart_legs(track)

    def request_keyframe(self, track_id: str) -> bool:
        """Ask the publisher for a keyframe, rate limited; True if a request went out now.

        Audio tracks have no keyframes: always False. Inside the rate-limit window the
        request is deferred to the window's end (at most one deferred per track).
        """
        track = self._tracks.get(track_id)
        if track is None or not track.is_video:
            return False
        if track.simulcast is not None:
            return track.simulcast.request_keyframes()
        now = self._clock()
        last = track.last_keyframe_request
        if last is None or now - last >= self._keyframe_interval:
            self._send_keyframe_request(track, now)
            return True
        if track.pending_keyframe is None:
            delay = last + self._keyframe_interval - now
            track.pending_keyframe = self._schedule(
                delay, lambda: self._deferred_keyframe_request(track)
            )
        return False

    async def forward(self, track_id: str, packet: MediaPacket) -> int:
        """Send one received packet to every leg of its track; returns how many sent."""
        track = self._tracks.get(track_id)
        if track is None:
            return 0
        track.received += 1
        if track.simulcast is not None:  # one SSRC per layer: the layers' own business
            if track.muted:
                track.dropped_muted += 1
                return 0
            sent = await track.simulcast.forward(packet)
            track.forwarded += sent
            self._forwarded_total += sent
            return sent
        if packet.ssrc != track.ssrc:
            if track.ssrc is not None:
                self._restart_legs(track)  # a new source: its sequence is unrelated
            track.ssrc = packet.ssrc
        if track.duplicates.is_repeat(packet.sequence_number):
            track.repeated += 1
            return 0
        if track.muted:
            track.dropped_muted += 1
            return 0
        sent = 0
        keyframe: bool | None = None
        waiting = False
        padding_only = not packet.payload
        split = track.split
        if split is None:
            split = track.split = _Split(list(track.subscriptions.values()))
        handed_back: list[tuple[int, int]] = []
        if split.legs and not padding_only:  # (no suspension point before this call)
            sent, handed_back = c_fanout.forward(
                packet, split.rewriters, split.legs, self.send_stamps
            )
        for index, leg_seq in handed_back:
            if await split.subs[index].leg.send(packet, leg_seq):
                sent += 1
        fast_legs: list[c_fanout.FastLeg] = []
        fast_seqs: list[int] = []
        fast_subs: list[_Subscription] = []
        for sub in split.rest if not padding_only else split.subs + split.rest:
            if sub.awaiting_keyframe:
                if keyframe is None:
                    keyframe = not padding_only and is_keyframe_start(
                        track.codec.name, packet.payload
                    )
                if not keyframe:
                    waiting = True
                    continue
                sub.awaiting_keyframe = False
                sub.rewriter.restart()
                track.split = None
            if padding_only and sub.rewriter.skip(packet.sequence_number):
                continue
            seq = sub.rewriter.rewrite(packet.sequence_number)
            if seq is None:
                continue
            fast = sub.fast
            if fast is not None:
                fast_legs.append(fast)
                fast_seqs.append(seq)
                fast_subs.append(sub)
            elif await sub.leg.send(packet, seq):
                sent += 1
        if fast_legs:
            fast_sent, unhandled = c_fanout.fanout(packet, fast_legs, fast_seqs, self.send_stamps)
            sent += fast_sent
            for index in unhandled:
                if await fast_subs[index].leg.send(packet, fast_seqs[index]):
                    sent += 1
        track.forwarded += sent
        self._forwarded_total += sent
        if waiting:
            self.request_keyframe(track_id)
        return sent

    def stats(self, track_id: str) -> TrackStats:
        track = self._track(track_id)
        return TrackStats(
            packets_received=track.received,
            packets_forwarded=track.forwarded,
            packets_dropped_muted=track.dropped_muted,
            packets_repeated=track.repeated
            + (track.simulcast.repeated if track.simulcast is not None else 0),
            keyframe_requests=track.keyframe_requests
            + (track.simulcast.keyframe_requests if track.simulcast is not None else 0),
            subscribers=len(track.subscriptions),
            muted=track.muted,
        )

    def close(self) -> None:
        """Unpublish every track (cancels deferred keyframe requests). Idempotent."""
        for track_id in list(self._tracks):
            self.unpublish(track_id)

    def _track(self, track_id: str) -> _Track:
        track = self._tracks.get(track_id)
        if track is None:
            raise TrackNotFound(track_id)
        return track

    def _restart_legs(self, track: _Track) -> None:
        if track.simulcast is not None:
            track.simulcast.restart(track.simulcast.source)
            return
        track.duplicates = DuplicateFilter()
        track.split = None
        for sub in track.subscriptions.values():
            sub.rewriter.restart()
            sub.awaiting_keyframe = track.is_video
        if track.is_video and track.subscriptions and not track.muted:
            self.request_keyframe(track.track_id)

    def _deferred_keyframe_request(self, track: _Track) -> None:
        track.pending_keyframe = None
        if self._tracks.get(track.track_id) is track:
            self._send_keyframe_request(track, self._clock())

    def _send_keyframe_request(self, track: _Track, now: float) -> None:
        track.last_keyframe_request = now
        track.keyframe_requests += 1
        try:
            track.request_keyframe()
        except Exception:
            logger.exception("keyframe request for track %s failed", track.track_id)
