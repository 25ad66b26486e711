"""The statekeeper's read API over NATS request/reply (`stagecast.sk.api`).

Answers `ListParticipantsRequest` (cursor pagination over the SQL roster at a pinned
snapshot), `GetParticipantRequest`, `ListRoomsRequest`, `ListDispatchesRequest` (a room's
agent jobs; none for a room it does not have), `HealthRequest` and the edges'
`MediaAssignRequest` (which forwarder carries a session's media) and `ActionOutcomeRequest`
(the reply to an action, sent again to an edge that missed it). A malformed
request gets an `Error` reply, never silence.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.msg import Msg

from schemas import subjects
from schemas.agents import DispatchListReply, ListDispatchesRequest
from schemas.api import (
    ActionOutcome,
    ActionOutcomeRequest,
    GetParticipantRequest,
    HealthReply,
    HealthRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    MediaAssignRequest,
    ParticipantReply,
    RoomListReply,
)
from schemas.client import Error, ParticipantsPage
from schemas.codec import Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from statekeeper.cursor import CURSOR_LIFETIME_MS, PageCursor, decode_cursor, encode_cursor
from statekeeper.errors import StatekeeperError
from statekeeper.service import Statekeeper
from statekeeper.state import participant_info, room_info

log = logging.getLogger("stagecast.statekeeper.queries")

MAX_PAGE = 500


class Queries:
    """Serves reads from the statekeeper's state and its roster store."""

    def __init__(
        self,
        keeper: Statekeeper,
        cursor_secret: bytes,
        *,
        cursor_lifetime_ms: int = CURSOR_LIFETIME_MS,
        subject: str = subjects.STATEKEEPER_API,
        queue: str = "statekeeper",
    ) -> None:
        self.keeper = keeper
        self.subject = subject
        """Where it listens: the read API, or one partition's subject when statekeepers
        share the partitions (`statekeeper.routing`)."""
        self.queue = queue
        self.cursor_secret = cursor_secret
        self.cursor_lifetime_ms = cursor_lifetime_ms
        self._sub: Any = None

    async def start(self) -> None:
        nc = self.keeper.nc
        self._sub = await nc.subscribe(self.subject, queue=self.queue, cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        try:
            data = await self.reply_bytes(decode(msg.data))
        except SchemaError as exc:
            data = encode(Error(code=exc.code.value, message=str(exc)))
        if msg.reply:
            await self.keeper.nc.publish(msg.reply, data)

    async def reply_bytes(self, request: Message) -> bytes:
        """The encoded reply to one decoded request (errors become `Error` replies)."""
        try:
            reply = await self.answer(request)
        except SchemaError as exc:
            reply = Error(code=exc.code.value, message=str(exc))
        except StatekeeperError as exc:
            reply = Error(code=exc.code.value, message=str(exc))
        except Exception as exc:
            log.exception("query failed")
            reply = Error(code=ErrorCode.INTERNAL.value, message=type(exc).__name__)
        return encode(reply)

    async def answer(self, request: Message) -> Message:
        """The reply to one read request."""
        if isinstance(request, ListParticipantsRequest):
            return await self.participants(request)
        if isinstance(request, MediaAssignRequest):
            return self.keeper.assign_media(request)
        if isinstance(request, ActionOutcomeRequest):
            return self.outcome(request)
        if isinstance(request, GetParticipantRequest):
            room = self.keeper.state.rooms.get(request.room_id)
            if room is None:
                return _error(ErrorCode.ROOM_NOT_FOUND, f"no room {request.room_id!r}")
            session = room.session_by_identity(request.participant_id)
            if session is None:
                return _error(ErrorCode.PARTICIPANT_NOT_FOUND, f"no {request.participant_id!r}")
            return ParticipantReply(participant=participant_info(session))
        if isinstance(request, ListDispatchesRequest):
            found = self.keeper.state.rooms.get(request.room_id)
            jobs = tuple(found.dispatches.values()) if found is not None else ()
            return DispatchListReply(dispatches=jobs)
        if isinstance(request, ListRoomsRequest):
            rooms = self.keeper.state.rooms
            wanted = request.room_ids if request.room_ids is not None else sorted(rooms)
            return RoomListReply(rooms=tuple(room_info(rooms[r]) for r in wanted if r in rooms))
        if isinstance(request, HealthRequest):
            link = self.keeper.link
            return HealthReply(
                service="statekeeper",
                ok=self.keeper.caught_up,
                applied_seq=self.keeper.applied_seq,
                rooms=len(self.keeper.state.rooms),
                persistence_state=self.keeper.persistence.persistence_state,
                persist_failures=self.keeper.persistence.persist_failures_total,
                poisoned_events=self.keeper.persistence.poisoned_events_total,
                nats_disconnects=link.disconnects if link is not None else 0,
                nats_reconnect_failures=link.failed_attempts if link is not None else 0,
                liveness_skipped=self.keeper.liveness_skipped,
                forwarders=len(self.keeper.forwarders.live(self.keeper.clock())),
            )
        return _error(ErrorCode.UNKNOWN_TYPE, f"the statekeeper does not answer {request.TYPE}")

    def outcome(self, request: ActionOutcomeRequest) -> ActionOutcome:
        """The reply the fold sent for an action, kept for an edge that missed it."""
        keeper = self.keeper
        if request.seq > keeper.applied_seq:
            return ActionOutcome(folded=False)
        return ActionOutcome(folded=True, frame=keeper.recent.reply(request.seq, request.reply_to))

    async def participants(self, request: ListParticipantsRequest) -> Message:
        """One page of a room's roster, speakers first, at the cursor's snapshot."""
        if not 1 <= request.limit <= MAX_PAGE:
            return _error(ErrorCode.BAD_REQUEST, f"limit must be 1..{MAX_PAGE}")
        now = self.keeper.clock()
        room = self.keeper.state.rooms.get(request.room_id)
        if room is None:
            return _error(ErrorCode.ROOM_NOT_FOUND, f"no room {request.room_id!r}")
        if request.cursor is None:
            # Pin the snapshot: everything folded so far goes to SQL, and the totals are
            # read at the instant the batch is cut, so they match the rows exactly.
            totals: list[int] = []

            def read_total() -> None:
                counts = room.counts()
                by_tier = {"speaker": counts.speaker, "viewer": counts.viewer}
                totals.append(by_tier.get(request.tier or "", counts.total))

            snapshot_seq = await self.keeper.flush(at_cut=read_total)
            total = totals[0]
            cursor = PageCursor(
                room_id=request.room_id,
                room_sid=room.sid,
                tier=request.tier,
                snapshot_seq=snapshot_seq,
                after=(-1, -1),
                total=total,
                issued_at_ms=now,
            )
        else:
            cursor = decode_cursor(
                request.cursor,
                self.cursor_secret,
                now_ms=now,
                lifetime_ms=self.cursor_lifetime_ms,
                room_id=request.room_id,
                room_sid=room.sid,
                tier=request.tier,
            )
        rows = await self.keeper.store.page(
            request.room_id,
            tier=request.tier,
            limit=request.limit + 1,
            snapshot_seq=cursor.snapshot_seq,
            after=None if cursor.after == (-1, -1) else cursor.after,
            from_seq=room.created_seq,
        )
        more = len(rows) > request.limit
        rows = rows[: request.limit]
        next_cursor = None
        if more:
            following = PageCursor(
                room_id=cursor.room_id,
                room_sid=cursor.room_sid,
                tier=cursor.tier,
                snapshot_seq=cursor.snapshot_seq,
                after=rows[-1][0],
                total=cursor.total,
                issued_at_ms=cursor.issued_at_ms,
            )
            next_cursor = encode_cursor(following, self.cursor_secret)
        return ParticipantsPage(
            id=0,
            participants=tuple(info for _key, info in rows),
            next_cursor=next_cursor,
            total=cursor.total,
        )


def _error(code: ErrorCode, message: str) -> Error:
    return Error(code=code.value, message=message)
