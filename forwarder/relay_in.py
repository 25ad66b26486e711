"""The downstream side of a relay: a track relayed from its origin into the local router.

A `RelayIn` subscribes to ``stagecast.relay.<this forwarder>.<track>``, asks the origin
with `RelayStart` (retrying with a backoff until it has the track, then renewing the
lease), publishes the track locally once accepted and forwards its packets;
`IncomingRelays` keeps at most one per track (the protocol is described in
`forwarder.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from forwarder.errors import TrackNotFound
from forwarder.node import Forwarder
from forwarder.relay import RELAY_REFRESH_S, codec_from_wire, packet_from_wire
from rtc.packets import CodecInfo
from schemas.client import Error
from schemas.codec import SchemaError, decode, encode
from schemas.media import (
    RelayAccepted,
    RelayCodec,
    RelayKeyframeRequest,
    RelayPacket,
    RelayStart,
    RelayStop,
)
from schemas.subjects import forwarder_rpc, relay

log = logging.getLogger("stagecast.forwarder.relay")

RELAY_PENDING_MSGS = 4096
"""Relayed packets buffered per track before NATS drops them (slow consumer)."""
START_BACKOFF_S = (0.1, 2.0)
"""First and longest wait between two `RelayStart` attempts the origin refused."""


class RelayInState(enum.Enum):
    STARTING = "starting"
    """Subscribed to the relay subject; the origin has not accepted yet."""
    ACTIVE = "active"
    """Published in the local router; packets flow."""
    FAILED = "failed"
    """The origin never accepted within the give-up time."""
    CLOSED = "closed"


class RelayIn:
    """The downstream side of one relayed track: NATS packets into the local router.

    `start()` subscribes and begins asking the origin; `on_change(track_sid)` runs each time
    the track becomes available here or stops being so. `close()` is idempotent and
    synchronous for what is local (the router track goes at once); `finish()` then
    unsubscribes and, if asked, tells the origin to stop.
    """

    def __init__(
        self,
        nc: NATS,
        forwarder: Forwarder,
        *,
        forwarder_id: str,
        origin_id: str,
        room_id: str,
        track_sid: str,
        on_change: Callable[[str], None],
        after: asyncio.Future[Any] | None = None,
        refresh_interval: float = RELAY_REFRESH_S,
        give_up_after: float = 30.0,
        request_timeout: float = 2.0,
    ) -> None:
        self._nc = nc
        self._forwarder = forwarder
        self.forwarder_id = forwarder_id
        self.origin_id = origin_id
        self.room_id = room_id
        self.track_sid = track_sid
        self._subject = relay(forwarder_id, track_sid)  # ValueError for an unusable id
        self._origin_rpc = forwarder_rpc(origin_id)
        self._on_change = on_change
        self._after = after
        self._refresh_interval = refresh_interval
        self._give_up_after = give_up_after
        self._request_timeout = request_timeout
        self.state = RelayInState.STARTING
        self.codec: CodecInfo | None = None
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._keyframe_task: asyncio.Task[None] | None = None
        self.packets_received = 0
        self.packets_dropped = 0
        """Relayed packets that were malformed or came while not active."""
        self.start_attempts = 0

    @property
    def active(self) -> bool:
        return self.state is RelayInState.ACTIVE

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay-in {self.track_sid}")

    def close(self) -> None:
        """Stop at once: the task is cancelled and the local track unpublished.

        A relay that failed stays `FAILED` (its task has ended already).
        """
        if self.state in (RelayInState.CLOSED, RelayInState.FAILED):
            return
        was_active = self.state is RelayInState.ACTIVE
        self.state = RelayInState.CLOSED
        for task in (self._task, self._keyframe_task):
            if task is not None:
                task.cancel()
        if was_active:
            with contextlib.suppress(TrackNotFound):  # the forwarder closed first
                self._forwarder.remove_relayed_track(self.track_sid)

    async def finish(self, *, notify_origin: bool, timeout: float = 1.0) -> None:
        """After `close()`: wait for the task, unsubscribe, and maybe send `RelayStop`."""
        self.close()
        tasks = [t for t in (self._task, self._keyframe_task) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if notify_origin:
            stop = RelayStop(
                room_id=self.room_id, track_sid=self.track_sid, to_forwarder=self.forwarder_id
            )
            try:
                await self._nc.request(self._origin_rpc, encode(stop), timeout=timeout)
            except Exception as exc:  # the origin is gone: its lease runs out on its own
                log.info("relay %s: RelayStop to %s: %r", self.track_sid, self.origin_id, exc)

    async def _run(self) -> None:
        try:
            await self._relay()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay %s from %s failed", self.track_sid, self.origin_id)
            self.close()
            self._on_change(self.track_sid)

    async def _relay(self) -> None:
        if self._after is not None:
            with contextlib.suppress(Exception):
                await self._after  # a former relay of this track finishing its stop
        self._sub = await self._nc.subscribe(
            self._subject, cb=self._on_packet, pending_msgs_limit=RELAY_PENDING_MSGS
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        backoff = START_BACKOFF_S[0]
        while True:
            codec, reason = await self._ask_origin()
            if codec is not None:
                self._accept(codec)
                backoff = START_BACKOFF_S[0]
                await asyncio.sleep(self._refresh_interval)
                continue
            if self.state is RelayInState.STARTING and loop.time() - began > self._give_up_after:
                log.warning(
                    "relay %s from %s: gave up after %d attempts in %.1f s (last: %s)",
                    self.track_sid,
                    self.origin_id,
                    self.start_attempts,
                    self._give_up_after,
                    reason,
                )
                self.state = RelayInState.FAILED
                self._on_change(self.track_sid)
                return
            wait = backoff if self.state is RelayInState.STARTING else self._refresh_interval
            backoff = min(backoff * 2, START_BACKOFF_S[1])
            await asyncio.sleep(wait)

    async def _ask_origin(self) -> tuple[RelayCodec | None, str]:
        """One `RelayStart`: the accepted codec, or None and why not."""
        self.start_attempts += 1
        start = RelayStart(
            room_id=self.room_id, track_sid=self.track_sid, to_forwarder=self.forwarder_id
        )
        try:
            reply = await self._nc.request(
                self._origin_rpc, encode(start), timeout=self._request_timeout
            )
            answer = decode(reply.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            return None, type(exc).__name__
        except SchemaError as exc:
            return None, f"unreadable reply: {exc}"
        if isinstance(answer, RelayAccepted):
            return answer.codec, ""
        if isinstance(answer, Error):
            return None, f"{answer.code}: {answer.message}"
        return None, f"unexpected reply {answer.TYPE}"

    def _accept(self, wire_codec: RelayCodec) -> None:
        codec = codec_from_wire(wire_codec)
        if self.state is RelayInState.ACTIVE:
            if codec == self.codec:
                return  # a renewal
            # the origin republished the track in another codec: legs must renegotiate
            self._forwarder.remove_relayed_track(self.track_sid)
            self.state = RelayInState.STARTING
            self._on_change(self.track_sid)
        self._forwarder.add_relayed_track(
            self.track_sid, codec, request_keyframe=self._request_keyframe
        )
        self.codec = codec
        self.state = RelayInState.ACTIVE
        self._on_change(self.track_sid)

    def _request_keyframe(self) -> None:
        # Called by the router (rate limited there); the origin rate-limits again.
        if self._keyframe_task is not None and not self._keyframe_task.done():
            return
        self._keyframe_task = asyncio.create_task(self._send_keyframe_request())

    async def _send_keyframe_request(self) -> None:
        try:
            await self._nc.publish(
                self._origin_rpc, encode(RelayKeyframeRequest(track_sid=self.track_sid))
            )
        except Exception as exc:
            log.debug("relay %s: keyframe request failed: %s", self.track_sid, exc)

    async def _on_packet(self, msg: Msg) -> None:
        if self.state is not RelayInState.ACTIVE:
            self.packets_dropped += 1
            return
        try:
            wire = decode(msg.data)
        except SchemaError:
            self.packets_dropped += 1
            return
        if not isinstance(wire, RelayPacket) or wire.track_sid != self.track_sid:
            self.packets_dropped += 1
            return
        self.packets_received += 1
        try:
            await self._forwarder.router.forward(self.track_sid, packet_from_wire(wire))
        except Exception:
            log.exception("relay %s: forwarding a packet failed", self.track_sid)


class IncomingRelays:
    """The relays a forwarder receives: at most one `RelayIn` per track.

    `ensure` starts one (or replaces one from another origin, or one that failed); `stop`
    closes one at once and finishes it in the background (a successor for the same track
    waits for that, so its `RelayStart` cannot cross the former's `RelayStop`).
    `on_change(track_sid)` runs whenever a track becomes available here or stops being so.
    """

    def __init__(
        self,
        nc: NATS,
        forwarder: Forwarder,
        *,
        forwarder_id: str,
        on_change: Callable[[str], None],
        refresh_interval: float = RELAY_REFRESH_S,
        give_up_after: float = 30.0,
        request_timeout: float = 2.0,
    ) -> None:
        self._nc = nc
        self._forwarder = forwarder
        self._forwarder_id = forwarder_id
        self._on_change = on_change
        self._refresh_interval = refresh_interval
        self._give_up_after = give_up_after
        self._request_timeout = request_timeout
        self._relays: dict[str, RelayIn] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}

    @property
    def by_track(self) -> dict[str, RelayIn]:
        return dict(self._relays)

    def active(self, track_sid: str, origin_id: str) -> bool:
        """Whether `track_sid` is relayed here from `origin_id` and published locally."""
        relay_in = self._relays.get(track_sid)
        return relay_in is not None and relay_in.active and relay_in.origin_id == origin_id

    def ensure(self, track_sid: str, *, origin_id: str, room_id: str) -> None:
        """Relay `track_sid` from `origin_id` here (nothing to do if it already is)."""
        current = self._relays.get(track_sid)
        if current is not None:
            running = current.state in (RelayInState.STARTING, RelayInState.ACTIVE)
            if running and current.origin_id == origin_id:
                return
            self.stop(track_sid, notify_origin=current.state is RelayInState.ACTIVE)
        try:
            relay_in = RelayIn(
                self._nc,
                self._forwarder,
                forwarder_id=self._forwarder_id,
                origin_id=origin_id,
                room_id=room_id,
                track_sid=track_sid,
                on_change=self._changed,
                after=self._stopping.get(track_sid),
                refresh_interval=self._refresh_interval,
                give_up_after=self._give_up_after,
                request_timeout=self._request_timeout,
            )
        except ValueError as exc:  # an id that cannot form a subject
            log.warning("cannot relay %r from %r: %s", track_sid, origin_id, exc)
            return
        self._relays[track_sid] = relay_in
        relay_in.start()

    def stop(self, track_sid: str, *, notify_origin: bool) -> None:
        relay_in = self._relays.pop(track_sid, None)
        if relay_in is None:
            return
        relay_in.close()
        task = asyncio.create_task(relay_in.finish(notify_origin=notify_origin))
        self._stopping[track_sid] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._stopping.get(track_sid) is done:
                del self._stopping[track_sid]

        task.add_done_callback(forget)
        self._on_change(track_sid)

    async def close(self) -> None:
        """Close every relay (a `RelayStop` to each origin, bounded) and wait for them."""
        relays = list(self._relays.values())
        self._relays.clear()
        for relay_in in relays:
            relay_in.close()
        await asyncio.gather(*(relay_in.finish(notify_origin=True) for relay_in in relays))
        stopping = list(self._stopping.values())
        if stopping:
            await asyncio.wait(stopping, timeout=5.0)
        for task in stopping:
            task.cancel()

    def _changed(self, track_sid: str) -> None:
        relay_in = self._relays.get(track_sid)
        if relay_in is not None and relay_in.state in (RelayInState.FAILED, RelayInState.CLOSED):
            self.stop(track_sid, notify_origin=False)  # the next desired state starts anew
            return
        self._on_change(track_sid)
