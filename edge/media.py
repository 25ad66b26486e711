"""Media signaling through the edge: client <-> edge <-> forwarder (docs/protocol.md, "Media").

The edge keeps no media state. For each signaling frame it asks the statekeeper which
forwarder carries the session's media (`MediaAssignRequest`; the statekeeper places it on
first use and checks an announced track), then relays the frame to that forwarder over NATS
request/reply and answers the client with the forwarder's reply under the frame's id.
Subscriber offers travel the other way without the edge's help: the forwarder publishes
them on the session's direct subject, which the edge forwards to the socket.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from access.rules import refuse_publish
from edge.session import EdgeSession
from schemas.api import MediaAssignment, MediaAssignRequest
from schemas.client import (
    Ack,
    Error,
    RestartIce,
    SetTrackLayers,
    SetVideoQuality,
    SignalAnswer,
    SignalCandidate,
    SignalOffer,
)
from schemas.codec import Message, encode
from schemas.errors import ErrorCode
from schemas.media import (
    ForwarderOk,
    ForwarderSdp,
    MediaCandidate,
    PublisherLayers,
    PublishOffer,
    RestartSubscription,
    SubscriberAnswer,
    SubscriberLayers,
)
from schemas.subjects import forwarder_rpc

M = TypeVar("M", bound=Message)

FORWARDER_TIMEOUT_S = 10.0
"""A forwarder answers an offer after ICE gathering and codec setup: allow some seconds."""


async def on_offer(session: EdgeSession, message: SignalOffer) -> None:
    if message.target != "publisher":
        return _bad(session, message.id, "subscriber connections are offered by the server")
    if message.track_sid is None:
        return _bad(session, message.id, "an offer names the announced track_sid it sends")
    refusal = refuse_publish(session.is_viewer, session.grant)
    if refusal is not None:
        return _fail(session, message.id, refusal.code, refusal.reason)
    assignment = await _assignment(session, message.id, message.track_sid)
    if assignment is None or assignment.kind is None:
        return
    request = PublishOffer(
        room_id=session.room_id,
        sid=session.sid,
        track_sid=message.track_sid,
        kind=assignment.kind,
        sdp=message.sdp,
        ice_restart=message.ice_restart,
        layers=message.layers,
    )
    reply = await _forward(session, message.id, assignment.forwarder_id, request)
    if isinstance(reply, ForwarderSdp):
        answer = SignalAnswer(
            id=message.id, target="publisher", sdp=reply.sdp, track_sid=message.track_sid
        )
        session.send(encode(answer), answer.TYPE)


async def on_answer(session: EdgeSession, message: SignalAnswer) -> None:
    if message.target != "subscriber" or message.track_sid is None:
        return _bad(session, message.id, "answers are for offered subscriber track_sids")
    request = SubscriberAnswer(
        room_id=session.room_id, sid=session.sid, track_sid=message.track_sid, sdp=message.sdp
    )
    await _relay(session, message.id, request)


async def on_candidate(session: EdgeSession, message: SignalCandidate) -> None:
    if message.track_sid is None:
        return _bad(session, message.id, "a candidate names the track_sid of its connection")
    request = MediaCandidate(
        room_id=session.room_id,
        sid=session.sid,
        track_sid=message.track_sid,
        target=message.target,
        candidate=message.candidate,
        sdp_mid=message.sdp_mid,
        sdp_mline_index=message.sdp_mline_index,
    )
    await _relay(session, message.id, request)


async def on_restart_ice(session: EdgeSession, message: RestartIce) -> None:
    await _relay(session, message.id, _for_forwarder(session, message, RestartSubscription))


async def on_set_video_quality(session: EdgeSession, message: SetVideoQuality) -> None:
    await _relay(session, message.id, _for_forwarder(session, message, SubscriberLayers))


async def on_set_track_layers(session: EdgeSession, message: SetTrackLayers) -> None:
    await _relay(session, message.id, _for_forwarder(session, message, PublisherLayers))


def _for_forwarder(session: EdgeSession, message: Message, kind: type[M]) -> M:
    """The forwarder request for a client's `message`: its fields but the request `id`,
    naming the session (the forwarder's requests have the same field names)."""
    fields = msgspec.structs.asdict(message)
    del fields["id"]
    fields.update(room_id=session.room_id, sid=session.sid)
    return kind(**fields)


async def _relay(session: EdgeSession, req: int, request: Message) -> None:
    """Send `request` to the session's forwarder; an `ack` when it says ok."""
    assignment = await _assignment(session, req, None)
    if assignment is None:
        return
    reply = await _forward(session, req, assignment.forwarder_id, request)
    if isinstance(reply, ForwarderOk):
        session.send(encode(Ack(id=req)), Ack.TYPE)


async def _assignment(
    session: EdgeSession, req: int, track_sid: str | None
) -> MediaAssignment | None:
    """The session's forwarder (placed on first use), or None after answering an error."""
    request = MediaAssignRequest(room_id=session.room_id, sid=session.sid, track_sid=track_sid)
    reply, _data = await session.node.bus.request(request)
    if isinstance(reply, MediaAssignment):
        return reply
    _reply_error(session, req, reply)
    return None


async def _forward(session: EdgeSession, req: int, forwarder_id: str, request: Message) -> Message:
    """A request to a forwarder; its reply, having already answered the client if it failed."""
    reply, _data = await session.node.bus.request(
        request, subject=forwarder_rpc(forwarder_id), timeout=FORWARDER_TIMEOUT_S
    )
    if not isinstance(reply, (ForwarderSdp, ForwarderOk)):
        _reply_error(session, req, reply)
    return reply


def _reply_error(session: EdgeSession, req: int, reply: Message) -> None:
    if isinstance(reply, Error):
        error = msgspec.structs.replace(reply, id=req)
    else:
        error = Error(id=req, code=ErrorCode.INTERNAL.value, message=f"unexpected {reply.TYPE}")
    session.node.metrics.error(error.code)
    session.send(encode(error), error.TYPE)


def _bad(session: EdgeSession, req: int, why: str) -> None:
    _fail(session, req, ErrorCode.BAD_REQUEST, why)


def _fail(session: EdgeSession, req: int, code: ErrorCode, why: str) -> None:
    session.error(req, code, why)


__all__ = [
    "on_answer",
    "on_candidate",
    "on_offer",
    "on_restart_ice",
    "on_set_track_layers",
    "on_set_video_quality",
]
