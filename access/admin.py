"""Admin grants: what an admin token lets its bearer do with the server API.

The names are LiveKit's (`VideoGrant`): `roomCreate` creates and deletes rooms, `roomList`
lists them, `roomAdmin` manages one room's participants, tracks, metadata and data, and
`room` names that room. A token naming a `room` is scoped to it for every grant it carries:
it creates or deletes only that room and lists only that room. `needed_for` is the one
table of which grant each request needs; the edge enforces it and `RoomService` mints
exactly it per call.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from schemas.agents import DeleteDispatchRequest, DispatchAgentRequest, ListDispatchesRequest
from schemas.api import (
    CreateRoomRequest,
    DeleteRoomRequest,
    GetParticipantRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    MuteTrackRequest,
    RemoveParticipantRequest,
    SendDataRequest,
    UpdateParticipantRequest,
    UpdateRoomMetadataRequest,
)
from schemas.codec import Message
from schemas.models import ID_CHARS


@dataclasses.dataclass(frozen=True, slots=True)
class AdminGrant:
    """What an admin token allows (see the module docstring). `room` None: any room."""

    room_create: bool = False
    room_list: bool = False
    room_admin: bool = False
    room: str | None = None

    def refusal(self, needed: AdminGrant) -> str | None:
        """Why this grant does not cover `needed` (a `needed_for` answer), or None."""
        for flag, claim in _CLAIMS.items():
            if getattr(needed, flag) and not getattr(self, flag):
                return f"the admin token has no {claim} grant"
        if self.room is not None and needed.room is not None and self.room != needed.room:
            return f"the admin token is scoped to room {self.room[:64]!r}, not {needed.room[:64]!r}"
        return None


_CLAIMS: Final = {"room_create": "roomCreate", "room_list": "roomList", "room_admin": "roomAdmin"}
"""Grant flag -> token claim, in the order refusals name them."""


def needed_for(request: Message) -> AdminGrant | None:
    """The grant a server API request needs, or None when it is no server API request.

    `create_room` / `delete_room`: `roomCreate`; `list_rooms`: `roomList`; every request on
    one room's participants, tracks, metadata, data or agents: `roomAdmin` for that room.
    """
    if isinstance(request, ListRoomsRequest):
        return AdminGrant(room_list=True)
    if isinstance(request, (CreateRoomRequest, DeleteRoomRequest)):
        return AdminGrant(room_create=True, room=request.room_id)
    if isinstance(
        request,
        (
            ListParticipantsRequest,
            GetParticipantRequest,
            UpdateParticipantRequest,
            RemoveParticipantRequest,
            MuteTrackRequest,
            UpdateRoomMetadataRequest,
            SendDataRequest,
            DispatchAgentRequest,
            DeleteDispatchRequest,
            ListDispatchesRequest,
        ),
    ):
        return AdminGrant(room_admin=True, room=request.room_id)
    return None


def claim_of(grant: AdminGrant) -> dict[str, bool | str]:
    """The token's `admin` claim for a grant (camelCase; `room` only when set)."""
    claim: dict[str, bool | str] = {c: getattr(grant, f) for f, c in _CLAIMS.items()}
    if grant.room is not None:
        claim["room"] = grant.room
    return claim


def grant_of(claim: object) -> AdminGrant:
    """Read a token's `admin` claim; `TypeError` / `ValueError` for a malformed one."""
    if not isinstance(claim, dict):
        raise TypeError("admin: must be an object of grants (roomCreate, roomList, ...)")
    flags: dict[str, bool] = {}
    for flag, name in _CLAIMS.items():
        value = claim.get(name, False)
        if type(value) is not bool:
            raise TypeError(f"admin.{name}: must be a boolean")
        flags[flag] = value
    room = claim.get("room")
    if room is not None and (type(room) is not str or not room or len(room) > ID_CHARS):
        raise TypeError(f"admin.room: must be a room id (1 to {ID_CHARS} characters)")
    grant = AdminGrant(room=room, **flags)
    check(grant)
    return grant


def check(grant: AdminGrant) -> None:
    """`ValueError` for a grant that allows nothing, or `roomAdmin` without a `room`."""
    if not (grant.room_create or grant.room_list or grant.room_admin):
        raise ValueError("the admin grant allows nothing: set roomCreate, roomList or roomAdmin")
    if grant.room_admin and grant.room is None:
        raise ValueError("roomAdmin needs the room it administers (room)")


__all__ = ["AdminGrant", "check", "claim_of", "grant_of", "needed_for"]
