"""Ingress sessions: a WHIP client in a room, with no signaling socket (docs/whip.md).

An `IngressSession` is owned by the edge that answered its ``POST /whip``: it joins the
room as a participant of kind ``ingress`` (`JoinRequested` naming this edge, so the
statekeeper's edge liveness covers it: if the edge dies, the session goes through the
departure grace and leaves), announces one track per m-line of the offer, and hands the
offer to the forwarder the statekeeper places it on (`IngressOffer`). It is registered
with the node like a socket's session, so replies on its subject reach it and a NATS
outage is followed by `SessionsAlive` for it too.

It leaves (`LeaveRequested`) on ``DELETE``, when its forwarder says its connection failed
or never connected (`IngressEnded`), and when the edge drains. A session removed by the
server (a `Disconnect` on its subject) just ends: the forwarder drops its connection.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from access.tokens import Claims
from edge.actions import new_track_sid
from edge.bus import BusUnavailable
from edge.ingress_sdp import OfferedMedia, offer_ufrag
from edge.join import new_participant_id, new_sid
from edge.latch import Latch
from edge.node import EdgeNode
from schemas.api import MediaAssignment, MediaAssignRequest
from schemas.client import Ack, Disconnect, Error, JoinAccepted, MediaMoved
from schemas.clock import now_ms
from schemas.codec import Message, SchemaError, decode
from schemas.errors import ErrorCode
from schemas.log import JoinRequested, LeaveRequested, TrackPublishRequested
from schemas.media import (
    ForwarderOk,
    ForwarderSdp,
    IngressEnded,
    IngressOffer,
    IngressTrack,
    MediaCandidate,
)
from schemas.models import TrackInfo
from schemas.subjects import forwarder_rpc, session, session_reply

log = logging.getLogger("stagecast.edge")

FORWARDER_TIMEOUT_S = 10.0
"""A forwarder answers an offer after ICE gathering and codec setup: allow some seconds."""

FORWARDER_CHECK_S = 5.0
"""How often a live session asks where its media is: moved off a forwarder that died, the
connection the client made is gone with it, so the session leaves."""

GONE = frozenset(
    {
        ErrorCode.NOT_JOINED.value,
        ErrorCode.ROOM_NOT_FOUND.value,
        ErrorCode.PARTICIPANT_NOT_FOUND.value,
    }
)
"""The statekeeper's answers that say the session is not in the room any more."""


class IngressRefused(Exception):
    """The session could not start; `code` is the client-visible error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class IngressState(enum.Enum):
    STARTING = "starting"
    LIVE = "live"
    ENDED = "ended"


class IngressSession:
    """One WHIP client's session on this edge (see the module docstring)."""

    def __init__(self, node: EdgeNode, room_id: str, claims: Claims) -> None:
        self.node = node
        self.claims = claims
        self._room_id = room_id
        self._sid = new_sid()
        self.participant_id = claims.participant_id or new_participant_id()
        self._connection_id = secrets.token_urlsafe(6)
        self.subject = session(node.edge_id, self._sid)
        self.reply_subject = session_reply(node.edge_id, self._sid, self._connection_id)
        self.state = IngressState.STARTING
        self.tracks: tuple[IngressTrack, ...] = ()
        self.forwarder_id = ""
        self.etag = secrets.token_urlsafe(12)
        """The session's entity tag (``ETag``): a PATCH names it in ``If-Match``."""
        self.ufrag = ""
        """The client's ICE ufrag: a PATCH with another one asks for an ICE restart."""
        self.bundled = False
        self._watch: asyncio.Task[None] | None = None
        self._epoch = 0
        self._detached = Latch()
        self._closed = Latch()
        self._replies: dict[int, asyncio.Future[Message]] = {}
        self._next_req = 0
        self.end_reason = ""
        self._appended = False

    # ------------------------------------------------------------------ Resident

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def connection_id(self) -> str:
        return self._connection_id

    @property
    def room_id(self) -> str:
        return self._room_id

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def joined(self) -> bool:
        return self.state is IngressState.LIVE or (
            self.state is IngressState.STARTING and self._epoch > 0
        )

    @property
    def detached(self) -> Latch:
        return self._detached

    @property
    def closed(self) -> Latch:
        return self._closed

    def on_direct(self, data: bytes) -> None:
        """A reply to one of the session's requests, an `IngressEnded`, a `MediaMoved` or a
        `Disconnect`."""
        try:
            message = decode(data)
        except SchemaError as exc:
            log.warning("ingress %s: undecodable direct frame: %s", self._sid, exc)
            return
        req = getattr(message, "id", None)
        if isinstance(message, (JoinAccepted, Ack, Error)) and isinstance(req, int):
            future = self._replies.pop(req, None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if isinstance(message, IngressEnded):
            log.info("ingress %s: %s", self._sid, message.reason)
            self._spawn(self.leave(f"media: {message.reason}"))
        elif isinstance(message, MediaMoved):
            # A WHIP client cannot be told to offer again: end the session, so that its
            # client sees the resource gone and starts a new one (on the new forwarder).
            log.info("ingress %s: its forwarder is gone", self._sid)
            self._spawn(self.leave("media: its forwarder is gone"))
        elif isinstance(message, Disconnect):
            self._ended(f"removed: {message.reason}")

    def shutdown(self) -> None:
        self._spawn(self.leave("the edge is stopping"))

    def supersede(self) -> None:
        """Never happens (no resume for ingress); ending is the safe answer."""
        self._ended("superseded")

    # ------------------------------------------------------------------ flow

    async def start(self, media: tuple[OfferedMedia, ...], offer_sdp: str) -> str:
        """Join, announce the tracks, get a forwarder's answer; the SDP answer.

        `IngressRefused` on failure; whatever was appended is undone first (a join is
        followed by its leave)."""
        self.node.register(self)
        self.ufrag = offer_ufrag(offer_sdp)
        self.bundled = "a=group:BUNDLE" in offer_sdp
        try:
            await self._join()
            tracks = await self._announce(media)
            answer = await self._offer(tracks, offer_sdp)
            if self.state is IngressState.ENDED:  # removed, or its media ended, meanwhile
                raise IngressRefused(ErrorCode.UNAVAILABLE.value, f"it ended: {self.end_reason}")
        except BaseException as exc:
            if self._appended:  # the join may have landed: undo it
                await self.leave(f"the start failed: {exc}")
            else:
                self._ended(f"refused: {exc}")
                self._detached.set()
            if isinstance(exc, BusUnavailable):
                raise IngressRefused(ErrorCode.UNAVAILABLE.value, str(exc)) from None
            raise
        self.state = IngressState.LIVE
        self._watch = asyncio.create_task(self._watch_forwarder(), name=f"ingress {self._sid}")
        return answer

    async def trickle(self, candidates: tuple[tuple[str | None, str], ...]) -> None:
        """Hand the client's trickled candidates to its connection (`IngressRefused` if
        the forwarder refuses one). BUNDLEd m-lines share the first one's transport."""
        if self.state is not IngressState.LIVE:
            raise IngressRefused(ErrorCode.NOT_JOINED.value, f"the session is {self.state.value}")
        by_mid = {track.mid: track for track in self.tracks}
        for mid, candidate in candidates:
            track = self.tracks[0] if self.bundled or mid is None else by_mid.get(mid)
            if track is None:
                raise IngressRefused(ErrorCode.BAD_REQUEST.value, f"no m-line with MID {mid!r}")
            request = MediaCandidate(
                room_id=self._room_id,
                sid=self._sid,
                track_sid=track.track_sid,
                target="publisher",
                candidate=candidate,
                sdp_mid=track.mid,
            )
            reply, _ = await self.node.bus.request(
                request, subject=forwarder_rpc(self.forwarder_id), timeout=FORWARDER_TIMEOUT_S
            )
            if not isinstance(reply, ForwarderOk):
                raise _refused(reply)

    async def _watch_forwarder(self) -> None:
        """Leave when the session's media moved off its forwarder (it died), or when the
        statekeeper says the session is gone."""
        request = MediaAssignRequest(room_id=self._room_id, sid=self._sid, track_sid=None)
        while self.state is IngressState.LIVE:
            await asyncio.sleep(FORWARDER_CHECK_S)
            try:
                reply, _ = await self.node.bus.request(request)
            except BusUnavailable:
                continue  # the link says so; the edge's liveness covers a long outage
            if isinstance(reply, MediaAssignment) and reply.forwarder_id != self.forwarder_id:
                await self.leave(f"its forwarder {self.forwarder_id} is gone")
                return
            if isinstance(reply, Error) and reply.code in GONE:
                self._ended(f"not in the room any more ({reply.code})")
                return

    async def _join(self) -> None:
        claims = self.claims
        req = self._req()
        event = JoinRequested(
            room_id=self._room_id,
            at=now_ms(),
            sid=self._sid,
            participant_id=self.participant_id,
            name=claims.name or self.participant_id,
            is_viewer=False,
            kind="ingress",
            grant=claims.grant,
            metadata=claims.metadata,
            attributes=claims.attributes,
            edge_id=self.node.edge_id,
            token_id=claims.token_id,
            token_expires_at=claims.expires_at * 1000,
            reply_to=self.reply_subject,
            req=req,
        )
        reply = await self._ask(req, event, f"ingress-join:{self._sid}")
        if not isinstance(reply, JoinAccepted):
            raise _refused(reply)
        self._epoch = max(1, reply.epoch)

    async def _announce(self, media: tuple[OfferedMedia, ...]) -> tuple[IngressTrack, ...]:
        tracks: list[IngressTrack] = []
        for item in media:
            track = TrackInfo(
                sid=new_track_sid(),
                kind=item.kind,
                source="camera" if item.kind == "video" else "microphone",
                name=f"whip-{item.kind}",
            )
            req = self._req()
            event = TrackPublishRequested(
                room_id=self._room_id,
                at=now_ms(),
                sid=self._sid,
                track=track,
                reply_to=self.reply_subject,
                req=req,
            )
            reply = await self._ask(req, event, f"ingress-track:{self._sid}:{track.sid}")
            if not isinstance(reply, Ack):
                raise _refused(reply)
            tracks.append(IngressTrack(mid=item.mid, track_sid=track.sid, kind=item.kind))
        self.tracks = tuple(tracks)
        return self.tracks

    async def _offer(self, tracks: tuple[IngressTrack, ...], offer_sdp: str) -> str:
        bus = self.node.bus
        assign = MediaAssignRequest(room_id=self._room_id, sid=self._sid, track_sid=None)
        reply, _ = await bus.request(assign)
        if not isinstance(reply, MediaAssignment):
            raise _refused(reply)
        self.forwarder_id = reply.forwarder_id
        offer = IngressOffer(
            room_id=self._room_id,
            sid=self._sid,
            subject=self.subject,
            tracks=tracks,
            sdp=offer_sdp,
        )
        answer, _ = await bus.request(
            offer, subject=forwarder_rpc(reply.forwarder_id), timeout=FORWARDER_TIMEOUT_S
        )
        if not isinstance(answer, ForwarderSdp):
            raise _refused(answer)
        return answer.sdp

    async def leave(self, reason: str) -> None:
        """Take the session out of the room (idempotent); the forwarder drops its media."""
        if self.state is IngressState.ENDED:
            return
        self._ended(reason)
        event = LeaveRequested(room_id=self._room_id, at=now_ms(), sid=self._sid)
        msg_id = f"ingress-leave:{self._sid}"
        try:
            await self.node.bus.append(event, msg_id)
        except BusUnavailable as exc:
            log.warning("ingress %s: leave not appended yet: %s", self._sid, exc)
            self.node.departure_failed(event, msg_id)
        finally:
            self._detached.set()

    def _ended(self, reason: str) -> None:
        if self.state is IngressState.ENDED:
            return
        self.state = IngressState.ENDED
        self.end_reason = reason
        self.node.unregister(self)
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        for future in self._replies.values():
            future.cancel()
        self._replies.clear()
        self._closed.set()
        log.info("ingress %s in %r ended: %s", self._sid, self._room_id, reason)

    # ------------------------------------------------------------------ requests

    def _req(self) -> int:
        self._next_req += 1
        return self._next_req

    async def _ask(
        self, req: int, event: JoinRequested | TrackPublishRequested, msg_id: str
    ) -> Message:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._replies[req] = future
        self._appended = True
        await self.node.bus.append(event, msg_id)
        try:
            return await asyncio.wait_for(future, self.node.config.request_timeout + 5.0)
        except TimeoutError:
            raise IngressRefused(
                ErrorCode.UNAVAILABLE.value, "no answer from the statekeeper"
            ) from None
        finally:
            self._replies.pop(req, None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)


_TASKS: set[asyncio.Task[None]] = set()
"""Leaves in flight (held so they are not collected before they are done)."""


def _refused(reply: Message) -> IngressRefused:
    if isinstance(reply, Error):
        return IngressRefused(reply.code, reply.message)
    return IngressRefused(ErrorCode.INTERNAL.value, f"unexpected {reply.TYPE}")
