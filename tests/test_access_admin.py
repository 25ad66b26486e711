"""Scoped admin grants on the server API, against a real edge, statekeeper and nats-server.

An admin token allows only what its grants say (`roomCreate`, `roomList`, `roomAdmin` for
its `room`), lives at most ten minutes, and an old unscoped ``admin: true`` token is refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

import stagecast
from access.admin import AdminGrant
from edge.replays import SeenTokens
from schemas.api import (
    CreateRoomRequest,
    DeleteRoomRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    OkReply,
    RemoveParticipantRequest,
    RoomListReply,
)
from schemas.client import Error, ParticipantsPage
from schemas.codec import Message, decode, encode
from stagecast import errors
from tests.edge_fixtures import API_KEY, API_SECRET, Stack, edge_stack

pytestmark = pytest.mark.timeout(60)

A, B = "room-a", "room-b"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with edge_stack(tmp_path) as running:
        for room in (A, B):
            created = await running.api("create_room", CreateRoomRequest(room_id=room))
            assert created.status_code == 200, created.content
        yield running


async def refused(stack: Stack, path: str, message: Message, grant: AdminGrant) -> Error:
    response = await stack.api(path, message, grant=grant)
    error = decode(response.content)
    assert isinstance(error, Error), error
    assert response.status_code == 403 and error.code == "INVALID_PERMISSIONS", error
    return error


LISTER = AdminGrant(room_list=True)


async def rooms(stack: Stack, grant: AdminGrant = LISTER) -> list[str]:
    reply = decode((await stack.api("list_rooms", ListRoomsRequest(), grant=grant)).content)
    assert isinstance(reply, RoomListReply), reply
    return [room.id for room in reply.rooms]


async def test_admin_token_scoped_to_room_a_cannot_delete_room_b(stack: Stack) -> None:
    scoped = AdminGrant(room_create=True, room=A)
    error = await refused(stack, "delete_room", DeleteRoomRequest(room_id=B), scoped)
    assert "scoped to room 'room-a'" in error.message
    assert await rooms(stack) == [A, B]  # nothing was deleted
    deleted = await stack.api("delete_room", DeleteRoomRequest(room_id=A), grant=scoped)
    assert isinstance(decode(deleted.content), OkReply)
    assert await rooms(stack) == [B]


async def test_room_admin_of_room_a_cannot_list_or_remove_participants_of_room_b(
    stack: Stack,
) -> None:
    bob = await stack.join("bob", B)
    admin_a = AdminGrant(room_admin=True, room=A)
    await refused(stack, "list_participants", ListParticipantsRequest(room_id=B), admin_a)
    remove = RemoveParticipantRequest(room_id=B, participant_id="bob")
    await refused(stack, "remove_participant", remove, admin_a)
    # Neither a roomCreate nor a roomList grant manages participants.
    await refused(stack, "remove_participant", remove, AdminGrant(room_create=True, room_list=True))
    await bob.sync()  # bob is still in room B: his socket answers
    page = decode(
        (await stack.api("list_participants", ListParticipantsRequest(room_id=B))).content
    )
    assert isinstance(page, ParticipantsPage) and [p.id for p in page.participants] == ["bob"]
    own = await stack.api("list_participants", ListParticipantsRequest(room_id=A), grant=admin_a)
    assert isinstance(decode(own.content), ParticipantsPage)


async def test_listing_rooms_needs_room_list_and_a_room_scope_lists_that_room_only(
    stack: Stack,
) -> None:
    for grant in (AdminGrant(room_create=True), AdminGrant(room_admin=True, room=A)):
        error = await refused(stack, "list_rooms", ListRoomsRequest(), grant)
        assert "roomList" in error.message
    await refused(stack, "create_room", CreateRoomRequest(room_id="c"), AdminGrant(room_list=True))
    assert await rooms(stack) == [A, B]
    assert await rooms(stack, AdminGrant(room_list=True, room=A)) == [A]
    scoped_b = AdminGrant(room_list=True, room=B)
    reply = await stack.api("list_rooms", ListRoomsRequest(room_ids=(A,)), grant=scoped_b)
    assert decode(reply.content) == RoomListReply(rooms=())


def signed(claims: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode(claims, API_SECRET, algorithm='HS256')}"}


async def post(stack: Stack, headers: dict[str, str]) -> tuple[int, Error]:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        response = await http.post(
            "/api/delete_room", content=encode(DeleteRoomRequest(room_id=B)), headers=headers
        )
    error = decode(response.content)
    assert isinstance(error, Error), error
    return response.status_code, error


async def test_expired_long_lived_and_unscoped_admin_tokens_are_refused(stack: Stack) -> None:
    now = int(time.time())
    expired = stagecast.generate_admin_token(API_KEY, API_SECRET, room_create=True, now=now - 3600)
    status, error = await post(stack, {"Authorization": f"Bearer {expired}"})
    assert (status, error.code) == (401, "TOKEN_EXPIRED")

    grants = {"roomCreate": True}
    base = {"iss": API_KEY, "nbf": now, "iat": now, "jti": "j"}
    forever = signed(base | {"admin": grants, "exp": now + 365 * 86_400})
    status, error = await post(stack, forever)
    assert (status, error.code) == (401, "INVALID_TOKEN") and "600 s" in error.message

    legacy = signed(base | {"admin": True, "exp": now + 60})  # an unscoped token of old
    status, error = await post(stack, legacy)
    assert (status, error.code) == (403, "INVALID_PERMISSIONS")
    assert await rooms(stack) == [A, B]


async def test_room_service_mints_a_token_of_exactly_what_each_call_needs(stack: Stack) -> None:
    async with stagecast.RoomService(stack.url, API_KEY, API_SECRET) as api:
        await api.create_room("c")
        assert [r.id for r in await api.list_rooms()] == ["c", A, B]
        await stack.join("carol", "c")
        assert [p.id for p in (await api.list_participants("c")).participants] == ["carol"]
        await api.remove_participant("c", "carol")
        await api.delete_room("c")
        with pytest.raises(errors.RoomNotFound):
            await api.list_participants("c")


async def test_an_admin_token_replayed_to_the_same_edge_is_refused(stack: Stack) -> None:
    headers = stack.admin_headers(AdminGrant(room_create=True, room=B))
    async with httpx.AsyncClient(base_url=stack.url) as http:
        body = encode(DeleteRoomRequest(room_id=B))
        first = await http.post("/api/delete_room", content=body, headers=headers)
        assert isinstance(decode(first.content), OkReply)
        await stack.api("create_room", CreateRoomRequest(room_id=B))
        replayed = await http.post("/api/delete_room", content=body, headers=headers)
    error = decode(replayed.content)
    assert isinstance(error, Error) and (replayed.status_code, error.code) == (401, "INVALID_TOKEN")
    assert "already signed a call" in error.message
    assert await rooms(stack) == [A, B]  # the recreated room was not deleted by the replay


def test_seen_tokens_remember_each_token_until_it_expires_and_stay_bounded() -> None:
    now = [1000.0]
    seen = SeenTokens(limit=2, clock=lambda: now[0])
    assert seen.first_use("a", 1010) and not seen.first_use("a", 1010)
    assert seen.first_use("b", 1020)
    now[0] = 1011.0  # "a" expired: forgotten (a token that old is refused as expired)
    assert seen.first_use("c", 1030)
    assert (len(seen), seen.evicted) == (2, 0)
    assert seen.first_use("d", 1040)  # full: "b", expiring first, is forgotten
    assert (len(seen), seen.evicted) == (2, 1)
    assert not seen.first_use("d", 1040) and not seen.first_use("c", 1030)
