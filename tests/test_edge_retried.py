"""A retried action is stored at most once and applied once (`edge.retried`, the SDK's retry).

The pure record first; then a real stack whose nats-server is frozen (SIGSTOP) while a client
sets its metadata: the edge cannot get the append confirmed and answers `UNAVAILABLE`, the
SDK sends the request again with the same id, and when the server thaws the first copy is
stored past the action deadline. The statekeeper refuses that copy (not applied); only then
does the edge give the retry a fresh message id, which is applied. The user's call returns
without an error, and the update is applied exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge.retried import RetriedActions
from stagecast.client import ConnectOptions
from tests.freezing import frozen, metadata_copies, unavailable_answers
from tests.polling import eventually
from tests.stack_fixtures import sdk_stack

ROOM = "retried"


def test_a_retry_of_a_failed_action_reuses_its_message_id() -> None:
    retried = RetriedActions()
    assert retried.msg_id(7, "metadata_set", lambda: "a") == "a"
    retried.failed(7, "metadata_set", "a")
    assert retried.msg_id(7, "metadata_set", lambda: "b") == "a"
    assert retried.msg_id(7, "attributes_set", lambda: "c") == "c"  # another request
    assert retried.msg_id(8, "metadata_set", lambda: "d") == "d"


def test_a_refused_copy_gives_the_retry_a_fresh_id_and_is_never_taken_up_again() -> None:
    retried = RetriedActions()
    retried.failed(7, "metadata_set", "a")
    retried.refused(7)
    assert retried.msg_id(7, "metadata_set", lambda: "b") == "b"
    retried.failed(7, "metadata_set", "a")  # an append under "a" that failed after the refusal
    assert retried.msg_id(7, "metadata_set", lambda: "c") == "c"
    retried.refused(9)  # nothing known: nothing happens
    assert len(retried) == 0


def test_the_record_is_bounded() -> None:
    retried = RetriedActions(limit=2)
    for req in range(5):
        retried.failed(req, "metadata_set", f"m{req}")
    assert len(retried) == 2
    assert retried.msg_id(0, "metadata_set", lambda: "new") == "new"
    assert retried.msg_id(4, "metadata_set", lambda: "new") == "m4"
    with pytest.raises(ValueError):
        RetriedActions(limit=0)


async def test_an_action_stored_late_is_retried_under_a_fresh_id_and_applied_once(
    tmp_path: Path,
) -> None:
    options = ConnectOptions(connect_timeout=15.0, request_timeout=20.0, retry_window=15.0)
    async with sdk_stack(tmp_path) as stack:
        room = await stack.join(stack.token("frozen", ROOM), options=options)

        async def refused_twice() -> bool:
            return await unavailable_answers(stack.url) >= 2

        with frozen(stack.nats):
            update = asyncio.create_task(room.local_participant.set_metadata("late"))
            # The edge gave up on the first copy (its 3 s deadline), then on a retry.
            await eventually(refused_twice, timeout=20, what="two UNAVAILABLE answers")
        await asyncio.wait_for(update, 30)  # no error reaches the caller

        async def applied() -> bool:
            page = await stack.api.list_participants(ROOM, limit=10)
            return [p.metadata for p in page.participants] == ["late"]

        await eventually(applied, what="the metadata applied")
        # The late copy (refused, not applied) and the retry's under a fresh id.
        assert await metadata_copies(stack.nats.url, "late") == (2, 1)
