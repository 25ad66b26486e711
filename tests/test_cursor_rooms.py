"""Roster cursors name the room instance: a cursor of a deleted room is no good on a new one.

End to end on a real stack (nats-server, statekeeper on SQLite, edge): page a room with the
server API, delete the room, create it again under the same id, present the old cursor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stagecast import errors
from tests.stack_fixtures import Stack, sdk_stack

pytestmark = pytest.mark.timeout(120)

ROOM = "reborn"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path) as running:
        yield running


async def test_cursor_of_a_deleted_room_is_expired_on_the_recreated_room(stack: Stack) -> None:
    first = await stack.api.create_room(ROOM)
    for n in range(3):
        await stack.join(stack.token(f"old-{n}", ROOM))
    page = await stack.api.list_participants(ROOM, limit=1)
    assert page.total == 3 and page.next_cursor is not None
    old_cursor = page.next_cursor

    await stack.api.delete_room(ROOM)
    second = await stack.api.create_room(ROOM)
    assert second.sid != first.sid
    await stack.join(stack.token("new-0", ROOM))

    with pytest.raises(errors.CursorExpired, match="new walk"):
        await stack.api.list_participants(ROOM, limit=1, cursor=old_cursor)

    # A fresh walk of the new room sees only the new room's participants.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await stack.api.list_participants(ROOM, limit=1, cursor=cursor)
        seen += [p.id for p in page.participants]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert (seen, page.total) == (["new-0"], 1)


async def test_cursor_of_a_deleted_room_is_room_not_found_while_it_is_gone(stack: Stack) -> None:
    await stack.api.create_room(ROOM)
    for n in range(2):
        await stack.join(stack.token(f"old-{n}", ROOM))
    page = await stack.api.list_participants(ROOM, limit=1)
    assert page.next_cursor is not None
    await stack.api.delete_room(ROOM)
    with pytest.raises(errors.RoomNotFound):
        await stack.api.list_participants(ROOM, limit=1, cursor=page.next_cursor)
