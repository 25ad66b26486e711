"""WebRTC media for the Python SDK: aiortc peer connections to the room's forwarder.

Connections are per track (docs/protocol.md, "Media"). Publishing a track opens one
send-only connection: the SDK offers, the edge relays the offer to the forwarder the
statekeeper placed this session on, and the answer comes back. Subscribing is the server's
move: after a `subscribe` the forwarder offers a receive-only connection for each track of
that kind (an `offer` frame with target ``subscriber``), the SDK answers, and the remote
track is handed to the participant's `stream-subscribed` listeners.

When a connection fails (the network changed), a publisher connection is replaced by a
fresh one offered with ``ice_restart``; a subscriber connection is replaced by asking for a
new offer (`restart_ice`). Restarts are bounded per track.

When the forwarder carrying this session dies, the server says `media_moved` once it placed
the session on another one: every published track is offered again at once, on a fresh
connection under the same track sid (the edge routes it to the new forwarder; the room sees
no unpublish), without waiting for the old connection to time out (ICE consent takes ~30 s).
Subscribed tracks need nothing from the client: the new forwarder offers them, and each
offer replaces its track's old connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from schemas.client import MediaMoved, RestartIce, SignalAnswer, SignalCandidate, SignalOffer
from schemas.codec import Message
from schemas.models import TrackKind
from stagecast.client.events import Subscription, SubscriptionFailure
from stagecast.client.receivable import CODEC_UNSUPPORTED, offered_codecs, unreceivable
from stagecast.errors import InvalidStateError, StagecastError

log = logging.getLogger("stagecast.client.media")

MAX_RESTARTS = 5
"""Connection restarts per track before the SDK gives up on it (and logs why)."""
RESTART_BACKOFF_S = 0.5


class MediaTransport(Protocol):
    """What the room needs from a media implementation (one per room session)."""

    async def publish(self, track_sid: str, track: Any) -> None:
        """Start sending `track` (an aiortc `MediaStreamTrack`) as the announced `track_sid`."""

    async def unpublish(self, track_sid: str) -> None:
        """Stop sending the track announced as `track_sid`."""

    async def subscribe(self, participant_id: str, kind: TrackKind) -> None:
        """Prepare to receive `participant_id`'s `kind` track (after the server acked)."""

    async def unsubscribe(self, participant_id: str, kind: TrackKind) -> None:
        """Stop receiving `participant_id`'s `kind` track."""

    def track_unpublished(self, track_sid: str) -> None:
        """A remote track is gone: drop its connection if subscribed."""

    def on_signal(self, frame: SignalOffer | SignalAnswer | SignalCandidate | MediaMoved) -> None:
        """A media signaling frame from the edge."""

    async def close(self) -> None:
        """Close every peer connection (no remote calls). Idempotent."""

    async def reset(self) -> None:
        """Close every peer connection but stay usable (after a full reconnect)."""


def receivable_codecs(kind: TrackKind) -> tuple[str, ...]:
    """The MIME types aiortc can receive for `kind` (VP8 and H.264 video, Opus and G.711
    audio: no VP9, no AV1)."""
    capabilities = RTCRtpReceiver.getCapabilities(kind)
    return tuple(codec.mimeType for codec in capabilities.codecs) if capabilities else ()


class MediaHost(Protocol):
    """What `PeerMedia` needs from its room."""

    callback_tasks: set[asyncio.Task[Any]]

    async def request(self, frame: Message) -> Message: ...

    def media_subscribed(self, subscription: Subscription) -> None: ...

    def media_unsubscribed(self, subscription: Subscription) -> None: ...

    def media_subscription_failed(self, failure: SubscriptionFailure) -> None: ...


@dataclasses.dataclass(slots=True)
class _Outbound:
    track_sid: str
    track: MediaStreamTrack
    pc: RTCPeerConnection
    restarts: int = 0


@dataclasses.dataclass(slots=True)
class _Inbound:
    track_sid: str
    participant_id: str
    kind: TrackKind
    pc: RTCPeerConnection
    subscription: Subscription | None = None
    restarts: int = 0


class PeerMedia:
    """aiortc connections for one room session: one per published and subscribed track."""

    def __init__(self, host: MediaHost, configuration: RTCConfiguration | None = None) -> None:
        self._host = host
        self._configuration = configuration or RTCConfiguration(iceServers=[])
        self._outbound: dict[str, _Outbound] = {}
        self._inbound: dict[str, _Inbound] = {}
        self._closed = False

    @property
    def peer_connections(self) -> list[RTCPeerConnection]:
        """Every connection this session has open (for tests and diagnostics)."""
        return [o.pc for o in self._outbound.values()] + [i.pc for i in self._inbound.values()]

    def subscriptions(self) -> list[Subscription]:
        return [i.subscription for i in self._inbound.values() if i.subscription is not None]

    # ------------------------------------------------------------------ publishing

    async def publish(self, track_sid: str, track: Any) -> None:
        self._check_open()
        if track_sid in self._outbound:
            raise InvalidStateError(f"track {track_sid!r} is already being sent")
        outbound = _Outbound(track_sid, track, self._new_pc())
        self._outbound[track_sid] = outbound
        try:
            await self._offer(outbound, ice_restart=False)
        except BaseException:
            self._outbound.pop(track_sid, None)
            await outbound.pc.close()
            raise

    async def _offer(self, outbound: _Outbound, *, ice_restart: bool) -> None:
        pc = outbound.pc
        pc.addTransceiver(outbound.track, direction="sendonly")
        self._watch(pc, lambda: self._restart_outbound(outbound.track_sid, pc))
        await pc.setLocalDescription(await pc.createOffer())
        frame = SignalOffer(
            id=0,
            target="publisher",
            sdp=pc.localDescription.sdp,
            track_sid=outbound.track_sid,
            ice_restart=ice_restart,
        )
        reply = await self._host.request(frame)
        if outbound.pc is not pc:
            return  # replaced meanwhile (`media_moved`, a restart): the newer offer counts
        if not isinstance(reply, SignalAnswer):
            raise InvalidStateError(f"expected an answer to the offer, got {reply.TYPE}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.sdp, type="answer"))

    async def _restart_outbound(self, track_sid: str, failed: RTCPeerConnection) -> None:
        outbound = self._outbound.get(track_sid)
        if outbound is None or not await self._may_restart(outbound, failed):
            return
        log.info("publisher connection of %s failed: restarting ICE", track_sid)
        outbound.pc = self._new_pc()
        await _close_keeping_tracks(failed)
        await self._offer(outbound, ice_restart=True)

    async def _move_outbound(self, track_sid: str) -> None:
        """Offer `track_sid` again on a fresh connection: its forwarder is gone and the
        session's media was placed elsewhere (`media_moved`). Retried with a growing pause
        while the offer fails (the new forwarder may still be starting)."""
        for attempt in range(1, MAX_RESTARTS + 1):
            outbound = self._outbound.get(track_sid)
            if outbound is None or self._closed:
                return
            old, outbound.pc = outbound.pc, self._new_pc()
            outbound.restarts = 0
            await _close_keeping_tracks(old)
            try:
                await self._offer(outbound, ice_restart=False)
                log.info("track %s moved to the session's new forwarder", track_sid)
                return
            except (StagecastError, TimeoutError) as exc:
                log.warning("moving track %s (attempt %d): %s", track_sid, attempt, exc)
            await asyncio.sleep(RESTART_BACKOFF_S * attempt)

    async def unpublish(self, track_sid: str) -> None:
        outbound = self._outbound.pop(track_sid, None)
        if outbound is not None:
            await outbound.pc.close()

    def stop_sending(self, track_sid: str | None = None) -> None:
        """The server unpublished `track_sid` (or, with None, all: a demotion)."""
        for sid in [track_sid] if track_sid is not None else list(self._outbound):
            if sid in self._outbound:
                self._spawn(self.unpublish(sid))

    # ------------------------------------------------------------------ subscribing

    async def subscribe(self, participant_id: str, kind: TrackKind) -> None:
        """Nothing to do here: the forwarder offers each subscribed track."""
        self._check_open()

    async def unsubscribe(self, participant_id: str, kind: TrackKind) -> None:
        for track_sid, inbound in list(self._inbound.items()):
            if inbound.participant_id == participant_id and inbound.kind == kind:
                await self._drop_inbound(track_sid)

    def track_unpublished(self, track_sid: str) -> None:
        if track_sid in self._inbound:
            self._spawn(self._drop_inbound(track_sid))

    async def _drop_inbound(self, track_sid: str) -> None:
        inbound = self._inbound.pop(track_sid, None)
        if inbound is None:
            return
        await inbound.pc.close()
        if inbound.subscription is not None:
            self._host.media_unsubscribed(inbound.subscription)

    def on_signal(self, frame: SignalOffer | SignalAnswer | SignalCandidate | MediaMoved) -> None:
        if isinstance(frame, MediaMoved):
            if not self._closed:
                for track_sid in list(self._outbound):
                    self._spawn(self._move_outbound(track_sid))
            return
        if isinstance(frame, SignalOffer) and frame.target == "subscriber":
            if frame.track_sid and frame.participant_id and frame.kind and not self._closed:
                self._spawn(self._accept(frame))
            else:
                log.warning("ignoring an incomplete subscriber offer")

    async def _accept(self, offer: SignalOffer) -> None:
        """Answer a subscriber offer on a fresh connection (replacing the track's old one)."""
        assert offer.track_sid and offer.participant_id and offer.kind
        codecs = unreceivable(offered_codecs(offer.sdp), receivable_codecs(offer.kind))
        if codecs:  # aiortc could not even take the offer: say why, answer nothing
            await self._drop_inbound(offer.track_sid)
            why = f"this client cannot decode {' or '.join(codecs)}"
            self._host.media_subscription_failed(
                SubscriptionFailure(
                    offer.participant_id,
                    offer.kind,
                    offer.track_sid,
                    CODEC_UNSUPPORTED,
                    codecs,
                    why,
                )
            )
            return
        previous = self._inbound.pop(offer.track_sid, None)
        pc = self._new_pc()
        inbound = _Inbound(offer.track_sid, offer.participant_id, offer.kind, pc)
        if previous is not None:
            inbound.restarts = previous.restarts
            await previous.pc.close()
        self._inbound[offer.track_sid] = inbound

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if self._inbound.get(inbound.track_sid) is not inbound:
                return
            if previous is not None and previous.subscription is not None:
                self._host.media_unsubscribed(previous.subscription)
            inbound.subscription = Subscription(
                participant_id=inbound.participant_id,
                kind=inbound.kind,
                track_sid=inbound.track_sid,
                track=track,
            )
            self._host.media_subscribed(inbound.subscription)

        self._watch(pc, lambda: self._restart_inbound(inbound.track_sid, pc))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = SignalAnswer(
            id=0, target="subscriber", sdp=pc.localDescription.sdp, track_sid=offer.track_sid
        )
        await self._host.request(answer)

    async def _restart_inbound(self, track_sid: str, failed: RTCPeerConnection) -> None:
        inbound = self._inbound.get(track_sid)
        if inbound is None or not await self._may_restart(inbound, failed):
            return
        log.info("subscriber connection of %s failed: asking for a new offer", track_sid)
        await self._host.request(RestartIce(id=0, track_sid=track_sid))

    async def _may_restart(self, entry: _Outbound | _Inbound, failed: RTCPeerConnection) -> bool:
        """Whether to replace `entry`'s failed connection, after a pause that grows with
        each restart; False once it was replaced already, or restarted too often."""
        if entry.pc is not failed or self._closed:
            return False
        if entry.restarts >= MAX_RESTARTS:
            log.warning("giving up on track %s after %d restarts", entry.track_sid, entry.restarts)
            return False
        entry.restarts += 1
        await asyncio.sleep(RESTART_BACKOFF_S * entry.restarts)
        return entry.pc is failed and not self._closed

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_all()

    async def reset(self) -> None:
        """The session was joined again (a full reconnect): its connections lead to a session
        that is gone. Close them all (subscribers hear `stream-unsubscribed`); the room then
        republishes and resubscribes, and new connections are made as for a first join."""
        if not self._closed:
            await self._close_all()

    async def _close_all(self) -> None:
        outbound, self._outbound = self._outbound, {}
        inbound, self._inbound = self._inbound, {}
        for pc in [o.pc for o in outbound.values()] + [i.pc for i in inbound.values()]:
            with contextlib.suppress(Exception):
                await pc.close()
        if not self._closed:
            for entry in inbound.values():
                if entry.subscription is not None:
                    self._host.media_unsubscribed(entry.subscription)

    def _new_pc(self) -> RTCPeerConnection:
        # Imported here, on first media use: the adapter refuses any aiortc but the pinned
        # one, and a client that only signals must not need that pin.
        from rtc.aiortc_adapter import allow_loopback_candidates

        allow_loopback_candidates()  # a host with only `lo` (a test namespace) still connects
        return RTCPeerConnection(self._configuration)

    def _watch(
        self, pc: RTCPeerConnection, restart: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "failed" and not self._closed:
                self._spawn(restart())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guard(coro))
        self._host.callback_tasks.add(task)
        task.add_done_callback(self._host.callback_tasks.discard)

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a media step failed: log it, the session goes on
            log.warning("media: %s: %s", type(exc).__name__, exc)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("the room's media is closed")


async def _close_keeping_tracks(pc: RTCPeerConnection) -> None:
    """Close a publisher connection whose track a new connection sends next: an aiortc
    sender stops its track when it stops, which would end the new connection's media too,
    so the senders let go of their tracks first."""
    for sender in pc.getSenders():
        sender.replaceTrack(None)
    await pc.close()


__all__ = ["MediaHost", "MediaTransport", "PeerMedia"]
