"""Simulcast signaling of one forwarder: subscribers' quality wishes in, dynacast out.

- A subscriber's `SubscriberLayers` (its `set_video_quality`, and the size it renders at)
  is kept per (session, track) and applied to whichever leg carries that track to that
  session, now or after a leg is replaced (ICE restart, a new publication).
- When the layers a simulcast track's legs take change, the publisher's session is sent a
  `LayersWanted` on its direct subject (the edge passes it to the client, which turns the
  other encodings off). Changes are coalesced per track: one send in flight, the newest
  state wins, so a burst of joins costs one message.
- When a subscriber's leg starts forwarding another layer, its session is sent a
  `VideoLayer` (the SDKs show it as the publication's layer), coalesced per leg the same
  way. The leg's session is known from `apply`, which every new leg goes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS

from forwarder.layers import Quality
from forwarder.node import Forwarder
from forwarder.simulcast import LAYER_RIDS
from schemas.client import LayersWanted, VideoLayer
from schemas.codec import Message, encode
from schemas.media import SubscriberLayers

log = logging.getLogger("stagecast.forwarder")

WishKey = tuple[str, str, str]
"""(room id, sid, track sid)"""
OutboxKey = tuple[str, str]
"""("wanted", track sid) or ("layer", subscriber id): one pending message each."""


class LayerSignals:
    """Quality wishes per session and track; dynacast messages to publishers."""

    def __init__(
        self,
        nc: NATS,
        forwarder: Forwarder,
        *,
        publisher_subject: Callable[[str], str | None],
        session_subject: Callable[[str, str], str | None] = lambda room_id, sid: None,
    ) -> None:
        self._nc = nc
        self._forwarder = forwarder
        self._publisher_subject = publisher_subject
        self._session_subject = session_subject
        self._wishes: dict[WishKey, SubscriberLayers] = {}
        self._leg_sessions: dict[str, tuple[str, str]] = {}
        """Subscriber id -> (room id, sid) of the session its leg serves."""
        self._outbox: dict[OutboxKey, tuple[str, Message]] = {}
        self._sender: asyncio.Task[None] | None = None
        self.sent = 0
        forwarder.on_wanted_layers = self._wanted
        forwarder.on_layer_forwarded = self._forwarded

    def wish(self, request: SubscriberLayers, subscriber_id: str | None) -> None:
        """Record a subscriber's wishes; applied at once to its leg `subscriber_id`.

        Fields the request leaves out keep their earlier value (a size report keeps the
        quality asked for, and the other way round).
        """
        key = (request.room_id, request.sid, request.track_sid)
        earlier = self._wishes.get(key)
        if earlier is not None:
            keep_size = request.width is None or request.height is None
            request = msgspec.structs.replace(
                request,
                quality=request.quality if request.quality is not None else earlier.quality,
                width=earlier.width if keep_size else request.width,
                height=earlier.height if keep_size else request.height,
            )
        self._wishes[key] = request
        if subscriber_id is not None:
            self.apply(request.room_id, request.sid, request.track_sid, subscriber_id)

    def apply(self, room_id: str, sid: str, track_sid: str, subscriber_id: str) -> None:
        """Give a new leg of (session, track) the wishes recorded for it, if any, and
        remember whose it is (its layer switches are told to that session)."""
        self._leg_sessions[subscriber_id] = (room_id, sid)
        request = self._wishes.get((room_id, sid, track_sid))
        if request is None:
            return
        rendered = None
        if request.width is not None and request.height is not None:
            rendered = (request.width, request.height)
        quality = Quality.parse(request.quality) if request.quality is not None else None
        self._forwarder.set_video_quality(
            subscriber_id, track_sid, quality=quality, rendered=rendered
        )

    def leg_closed(self, subscriber_id: str) -> None:
        """A leg is gone: its switches are no longer told to anyone."""
        self._leg_sessions.pop(subscriber_id, None)

    def forget(self, room_id: str, sid: str) -> None:
        """A session is gone: drop its wishes (its legs were closed one by one)."""
        for key in [k for k in self._wishes if k[0] == room_id and k[1] == sid]:
            del self._wishes[key]

    def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None

    def _wanted(self, track_sid: str, layers: frozenset[int]) -> None:
        subject = self._publisher_subject(track_sid)
        if subject:  # not published here, or its session closed (subject "")
            rids = tuple(LAYER_RIDS[layer] for layer in sorted(layers))
            message = LayersWanted(track_sid=track_sid, rids=rids)  # type: ignore[arg-type]
            self._post(("wanted", track_sid), subject, message)

    def _forwarded(self, subscriber_id: str, track_sid: str, layer: int) -> None:
        session = self._leg_sessions.get(subscriber_id)
        subject = self._session_subject(*session) if session is not None else None
        if subject:
            message = VideoLayer(track_sid=track_sid, rid=LAYER_RIDS[layer])  # type: ignore[arg-type]
            self._post(("layer", subscriber_id), subject, message)

    def _post(self, key: OutboxKey, subject: str, message: Message) -> None:
        """Queue `message` for `subject`, replacing one still queued under `key`."""
        self._outbox[key] = (subject, message)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(
                self._send_pending(), name="forwarder layer signals"
            )

    async def _send_pending(self) -> None:
        while self._outbox:
            key = next(iter(self._outbox))
            subject, message = self._outbox.pop(key)
            try:
                await self._nc.publish(subject, encode(message))
                self.sent += 1
            except Exception as exc:  # the next change (or switch) says it again
                log.warning("%s for %s not sent: %r", message.TYPE, key[1], exc)
