"""`RoomService`: the server API, over HTTP on any edge, for backends and admin tools.

Each call POSTs one msgpack-encoded `schemas.api` request to `/api/<tag>` on the edge,
signed with a fresh admin token that lives 60 s and grants exactly what the call needs
(`roomCreate`, `roomList`, or `roomAdmin` for the call's room: `access.admin`),
and decodes the reply. A refusal arrives as its `stagecast.errors` class (`RoomNotFound`,
`ParticipantNotFound`, ...); an edge that cannot be reached, or answers with something that
is not a reply, raises `Unavailable`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from access.admin import needed_for
from access.tokens import ADMIN_TOKEN_TTL, generate_admin_token
from schemas.agents import (
    AgentDispatch,
    DeleteDispatchRequest,
    DispatchAgentRequest,
    DispatchListReply,
    DispatchReply,
    ListDispatchesRequest,
)
from schemas.api import (
    CreateRoomRequest,
    DeleteRoomRequest,
    GetParticipantRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    MuteTrackRequest,
    OkReply,
    ParticipantReply,
    RemoveParticipantRequest,
    RoomListReply,
    RoomReply,
    SendDataRequest,
    UpdateParticipantRequest,
    UpdateRoomMetadataRequest,
)
from schemas.client import Error, ParticipantsPage
from schemas.codec import Message, SchemaError, decode, encode
from schemas.models import Grant, ParticipantInfo, RoomInfo, Tier
from stagecast.client.connection import http_url
from stagecast.client.participant import GetParticipantsResult
from stagecast.errors import Unavailable, error_for

__all__ = ["ParticipantInfo", "RoomInfo", "RoomService"]

CONTENT_TYPE = "application/msgpack"

R = TypeVar("R", bound=Message)

_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "INVALID_TOKEN",
    403: "INVALID_PERMISSIONS",
    404: "ROOM_NOT_FOUND",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
}
"""The error of an HTTP answer that carries no reply frame (a proxy's, say)."""


def api_path(request: Message) -> str:
    """The route of a request: `/api/<tag>` with the tag's `api.` prefix dropped."""
    return "/api/" + request.TYPE.removeprefix("api.")


class RoomService:
    """The server API client (see the module docstring). Close it with `aclose()`.

    Usable as an async context manager. `url` is an edge's base URL (`http(s)://`, or
    `ws(s)://`, which is mapped to HTTP).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = http_url(url)
        self._api_key = api_key
        self._api_secret = api_secret
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> RoomService:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client. Idempotent."""
        await self._http.aclose()

    # ------------------------------------------------------------------ rooms

    async def create_room(
        self,
        room_id: str,
        max_participants: int = 0,
        empty_timeout: int = 300,
        departure_timeout: int = 20,
        metadata: str = "",
        livestream: bool = False,
        agents: Sequence[str] = (),
    ) -> RoomInfo:
        """Create a room (or return the existing one of that id).

        `agents`: agent names to dispatch once the room exists, one job each (see
        `dispatch_agent`).

        `empty_timeout`: seconds an unused room lives; `departure_timeout`: seconds a
        dropped participant may resume, and the room lives after the last one leaves.
        `livestream`: participants with no tracks, metadata or attributes stay hidden.
        """
        request = CreateRoomRequest(
            room_id=room_id,
            max_participants=max_participants,
            empty_timeout=empty_timeout,
            departure_timeout=departure_timeout,
            metadata=metadata,
            livestream=livestream,
            agents=tuple(agents),
        )
        return (await self._call(request, RoomReply)).room

    async def list_rooms(self, room_ids: Sequence[str] | None = None) -> list[RoomInfo]:
        """Every open room, or those of `room_ids` that exist."""
        request = ListRoomsRequest(room_ids=None if room_ids is None else tuple(room_ids))
        return list((await self._call(request, RoomListReply)).rooms)

    async def delete_room(self, room_id: str) -> None:
        """Close a room now: every participant gets `disconnected` `ROOM_DELETED`."""
        await self._call(DeleteRoomRequest(room_id=room_id), OkReply)

    async def update_room_metadata(self, room_id: str, metadata: str) -> RoomInfo | None:
        """Replace the room's metadata (`room-metadata-changed` on every client)."""
        reply = await self._call_any(UpdateRoomMetadataRequest(room_id=room_id, metadata=metadata))
        return reply.room if isinstance(reply, RoomReply) else None

    # ------------------------------------------------------------------ participants

    async def list_participants(
        self,
        room_id: str,
        tier: Tier | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> GetParticipantsResult[ParticipantInfo]:
        """One page of the room's participants (speakers first, then viewers).

        Pass `next_cursor` back for the next page; every page of one walk reads the snapshot
        the first page pinned.
        """
        request = ListParticipantsRequest(room_id=room_id, tier=tier, limit=limit, cursor=cursor)
        page = await self._call(request, ParticipantsPage)
        return GetParticipantsResult(
            participants=list(page.participants), next_cursor=page.next_cursor, total=page.total
        )

    async def get_participant(self, room_id: str, participant_id: str) -> ParticipantInfo:
        request = GetParticipantRequest(room_id=room_id, participant_id=participant_id)
        return (await self._call(request, ParticipantReply)).participant

    async def update_participant(
        self,
        room_id: str,
        participant_id: str,
        *,
        is_viewer: bool | None = None,
        grant: Grant | None = None,
        metadata: str | None = None,
        attributes: dict[str, str] | None = None,
        name: str | None = None,
    ) -> ParticipantInfo:
        """Change a participant live; `is_viewer` promotes or demotes it between tiers.

        A tier or grant change reaches the client as `tier-changed`; everyone sees the
        speaker set change (`participant-joined` / `participant-left`) and the counts move.
        `attributes` merge (an empty value deletes its key).
        """
        request = UpdateParticipantRequest(
            room_id=room_id,
            participant_id=participant_id,
            is_viewer=is_viewer,
            grant=grant,
            metadata=metadata,
            attributes=None if attributes is None else dict(attributes),
            name=name,
        )
        return (await self._call(request, ParticipantReply)).participant

    async def remove_participant(self, room_id: str, participant_id: str) -> None:
        """Remove a participant (`disconnected` `REMOVED`).

        Its token (by `jti`) is refused in every room from now until it expires, even after
        the room closed; a new token joins.
        """
        request = RemoveParticipantRequest(room_id=room_id, participant_id=participant_id)
        await self._call(request, OkReply)

    async def mute_track(
        self, room_id: str, participant_id: str, track_sid: str, muted: bool = True
    ) -> ParticipantInfo | None:
        """Mute (or unmute) a participant's track for everyone."""
        request = MuteTrackRequest(
            room_id=room_id, participant_id=participant_id, track_sid=track_sid, muted=muted
        )
        reply = await self._call_any(request)
        return reply.participant if isinstance(reply, ParticipantReply) else None

    async def send_data(
        self,
        room_id: str,
        payload: bytes,
        topic: str | None = None,
        destination_ids: Sequence[str] | None = None,
        reliable: bool = True,
    ) -> None:
        """Send a data message to the room (or only to `destination_ids`), sender None."""
        request = SendDataRequest(
            room_id=room_id,
            payload=bytes(payload),
            topic=topic,
            destination_ids=tuple(destination_ids or ()),
            reliable=reliable,
        )
        await self._call_any(request)

    # ------------------------------------------------------------------ agents

    async def dispatch_agent(
        self, room_id: str, agent_name: str, metadata: str = ""
    ) -> AgentDispatch:
        """Start agent `agent_name` in `room_id`: one job, for exactly one registered worker
        (the least loaded). The job is `pending` until a worker of that name takes it.

        The job is room state (in the room log): it outlives a statekeeper restart or
        takeover, and ends with the room. `RoomNotFound` without the room; `RateLimited`
        past 64 jobs in the room."""
        request = DispatchAgentRequest(room_id=room_id, agent_name=agent_name, metadata=metadata)
        return (await self._call(request, DispatchReply)).dispatch

    async def create_dispatch(
        self, room_id: str, agent_name: str, metadata: str = ""
    ) -> AgentDispatch:
        """`dispatch_agent` under the name other room services give it."""
        return await self.dispatch_agent(room_id, agent_name, metadata)

    async def delete_dispatch(self, room_id: str, dispatch_id: str) -> AgentDispatch:
        """Take an agent job back: it is no longer listed, its agent is removed from the
        room (its worker sees the room disconnect it), and it is not offered again.
        Returns the job as it was; `DispatchNotFound` if the room has no such job."""
        request = DeleteDispatchRequest(room_id=room_id, dispatch_id=dispatch_id)
        return (await self._call(request, DispatchReply)).dispatch

    async def list_dispatches(self, room_id: str) -> list[AgentDispatch]:
        """The room's agent jobs (pending, running, ended), oldest first."""
        request = ListDispatchesRequest(room_id=room_id)
        return list((await self._call(request, DispatchListReply)).dispatches)

    # ------------------------------------------------------------------ transport

    async def _call(self, request: Message, reply_type: type[R]) -> R:
        reply = await self._call_any(request)
        if not isinstance(reply, reply_type):
            raise Unavailable(f"{request.TYPE}: unexpected reply {reply.TYPE}")
        return reply

    async def _call_any(self, request: Message) -> Message:
        """POST `request`, return the decoded reply; raise an `Error` reply as its class."""
        try:
            body = encode(request)
        except SchemaError as exc:
            raise error_for(exc.code.value, str(exc)) from None
        needed = needed_for(request)
        if needed is None:
            raise error_for("UNKNOWN_TYPE", f"{request.TYPE} is not a server API request")
        token = generate_admin_token(
            self._api_key, self._api_secret, ttl=ADMIN_TOKEN_TTL, **dataclasses.asdict(needed)
        )
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": CONTENT_TYPE,
            "Accept": CONTENT_TYPE,
        }
        try:
            response = await self._http.post(api_path(request), content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{request.TYPE}: {type(exc).__name__}: {exc}") from None
        try:
            reply = decode(response.content)
        except SchemaError:
            code = _STATUS_CODES.get(response.status_code, "UNAVAILABLE")
            detail = response.text[:200] if response.content else ""
            raise error_for(
                code, f"{request.TYPE}: HTTP {response.status_code} {detail}".strip()
            ) from None
        if isinstance(reply, Error):
            raise error_for(reply.code, reply.message)
        return reply
