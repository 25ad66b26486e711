"""Revoked participant tokens and single-use resume tokens, through a real stack.

A real nats-server, statekeeper (SQLite) and edge per test, driven over raw sockets: a
removal revokes the token id in every room, through the room's end and a statekeeper
restart; a resume token works once, never takes a live session over, and ends with the
participant token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import jwt
import pytest

from access.tokens import verify_token
from edge.config import EdgeConfig
from edge.main import running_edge
from edge.resume import (
    RESUME_TTL,
    ResumeClaims,
    ResumeRefused,
    mint_resume_token,
    verify_resume_token,
)
from processes.natsserver import NatsServer
from schemas.api import DeleteRoomRequest, OkReply, RemoveParticipantRequest
from schemas.client import (
    Ack,
    Disconnect,
    Error,
    Join,
    JoinAccepted,
    ParticipantLeft,
    ParticipantUpdated,
    SetMetadata,
)
from schemas.codec import decode
from schemas.models import Grant
from statekeeper.main import running_statekeeper
from tests.edge_fixtures import (
    API_KEY,
    API_SECRET,
    ROOM,
    Client,
    Stack,
    stack,
    statekeeper_config,
)
from tests.polling import eventually

__all__ = ["stack"]  # the fixture, re-exported for pytest

KEYS = {API_KEY: API_SECRET}.get


async def _refused(client: Client, join: Join) -> Error:
    """Send a join (or resume) that must be refused; the socket must close after it."""
    await client.send(join)
    error = await client.error(join.id)
    await client.closed()
    return error


async def _remove(stack: Stack, room: str, participant_id: str) -> None:
    response = await stack.api(
        "remove_participant", RemoveParticipantRequest(room_id=room, participant_id=participant_id)
    )
    assert isinstance(decode(response.content), OkReply), response.content


async def _still_live(stack: Stack, watcher: Client, live: Client, metadata: str) -> None:
    """`live` still owns its session: it acts, and `watcher` sees the act, not a leave."""
    assert not live.of(Disconnect)
    assert isinstance(await live.request(SetMetadata(id=live.next_id(), metadata=metadata)), Ack)
    await watcher.expect(ParticipantUpdated, lambda m: m.participant.metadata == metadata)
    assert live.joined is not None
    assert live.joined.participant.sid not in [m.sid for m in watcher.of(ParticipantLeft)]


# --------------------------------------------------------------------------- revocation


async def test_removed_roomless_token_cannot_rejoin_under_a_new_generated_id(
    stack: Stack,
) -> None:
    alice = await stack.join("alice")
    token = stack.token(None, room=None)  # roomless, no participant id: one made per join
    guest = await stack.connect()
    joined = await guest.request(Join(id=1, token=token, room_id=ROOM))
    assert isinstance(joined, JoinAccepted)
    await _remove(stack, ROOM, joined.participant.id)
    assert (await guest.expect(Disconnect)).reason == "REMOVED"

    again = await stack.connect()
    error = await _refused(again, Join(id=1, token=token, room_id=ROOM))
    assert error.code == "INVALID_TOKEN" and "removed" in error.message
    elsewhere = await stack.connect()  # a roomless token is refused in every room
    error = await _refused(elsewhere, Join(id=1, token=token, room_id="another-room"))
    assert error.code == "INVALID_TOKEN"
    await _still_live(stack, alice, alice, "unaffected")
    other = await stack.connect()
    accepted = await other.request(Join(id=1, token=stack.token(None, room=None), room_id=ROOM))
    assert isinstance(accepted, JoinAccepted)  # another token of the same kind still joins


async def test_revocation_outlives_the_room_and_a_statekeeper_restart(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "nats") as server:
        keeper_config = statekeeper_config(server, tmp_path)
        first = contextlib.AsyncExitStack()
        keeper = await first.enter_async_context(running_statekeeper(keeper_config))
        await keeper.wait_caught_up()
        edge_config = EdgeConfig(
            nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0
        )
        async with running_edge(edge_config) as url:
            stack = Stack(nats=server, url=url, config=edge_config)
            try:
                token = stack.token("bob", room="stage")
                bob = await stack.connect()
                assert isinstance(await bob.request(Join(id=1, token=token)), JoinAccepted)
                await _remove(stack, "stage", "bob")
                deleted = await stack.api("delete_room", DeleteRoomRequest(room_id="stage"))
                assert isinstance(decode(deleted.content), OkReply)
                await first.aclose()  # a clean stop: the last snapshot holds the revocation

                async with running_statekeeper(keeper_config) as keeper:
                    await keeper.wait_caught_up()
                    assert "stage" not in keeper.state.rooms
                    again = await stack.connect()
                    error = await _refused(again, Join(id=1, token=token))
                    assert error.code == "INVALID_TOKEN" and "removed" in error.message
                    # Revoked is the token, not the identity: a new token for bob joins.
                    await stack.join("bob", room="stage")
            finally:
                await stack.close_clients()
                await first.aclose()


# --------------------------------------------------------------------------- resume tokens


async def _drop_and_resume(stack: Stack, client: Client, token: str) -> Client:
    """Drop `client`'s socket and resume its session with `token` on a new one."""
    await client.ws.close()
    resumed = await stack.connect()
    reply = await resumed.request(Join(id=1, token="", resume=token))
    assert isinstance(reply, JoinAccepted) and reply.resumed, reply
    resumed.joined = reply
    return resumed


async def test_a_resume_token_works_once_and_a_replay_does_not_take_over_the_live_session(
    stack: Stack,
) -> None:
    alice = await stack.join("alice")
    bob = await stack.join("bob")
    assert bob.joined is not None
    spent = bob.joined.resume_token
    live = await _drop_and_resume(stack, bob, spent)
    assert live.joined is not None and live.joined.resume_token != spent
    assert verify_resume_token(live.joined.resume_token, KEYS).epoch == 2

    # Someone replays the spent token on the edge that holds the live session...
    thief = await stack.connect()
    error = await _refused(thief, Join(id=1, token="", resume=spent))
    assert error.code == "RESUME_FAILED"
    await _still_live(stack, alice, live, "still-mine")

    # ...and on another edge, where only the statekeeper can tell it is spent.
    config = EdgeConfig(nats_url=stack.nats.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
    async with running_edge(config) as other_url:
        other = Stack(nats=stack.nats, url=other_url, config=config)
        try:
            thief = await other.connect()
            error = await _refused(thief, Join(id=1, token="", resume=spent))
            assert error.code == "RESUME_FAILED"
        finally:
            await other.close_clients()
    await _still_live(stack, alice, live, "still-mine-2")


async def test_a_stale_epoch_token_after_a_newer_resume_is_refused(stack: Stack) -> None:
    alice = await stack.join("alice")
    bob = await stack.join("bob")
    assert bob.joined is not None
    first = bob.joined.resume_token
    second_socket = await _drop_and_resume(stack, bob, first)
    assert second_socket.joined is not None
    second = second_socket.joined.resume_token
    third_socket = await _drop_and_resume(stack, second_socket, second)
    assert third_socket.joined is not None
    newest = verify_resume_token(third_socket.joined.resume_token, KEYS)
    assert newest.epoch == 3
    # Each new token still ends with the participant token the session joined with.
    assert newest.expires_at == verify_resume_token(first, KEYS).expires_at > 0
    await third_socket.ws.close()  # bob is in his grace: no live socket guards the sid
    for stale in (first, second):
        error = await _refused(await stack.connect(), Join(id=1, token="", resume=stale))
        assert error.code == "RESUME_FAILED"
    # The newest token still resumes him, and nobody saw him leave.
    await _drop_and_resume(stack, await stack.connect(), third_socket.joined.resume_token)
    assert not alice.of(ParticipantLeft)


async def test_a_resume_token_ends_with_the_participant_token(stack: Stack) -> None:
    token = stack.token("bob", ttl=2)
    expires_at = verify_token(token, KEYS).expires_at
    bob = await stack.connect()
    joined = await bob.request(Join(id=1, token=token))
    assert isinstance(joined, JoinAccepted)
    facts = verify_resume_token(joined.resume_token, KEYS)
    assert facts.expires_at == expires_at
    await bob.ws.close()
    # Wait out the participant token (the departure grace, 20 s, keeps the session).
    await eventually(
        lambda: time.time() >= expires_at, what="the participant token to expire", timeout=10
    )
    error = await _refused(await stack.connect(), Join(id=1, token="", resume=joined.resume_token))
    assert error.code == "RESUME_FAILED" and "expired" in error.message


def test_resume_token_exp_is_the_sooner_of_its_ttl_and_the_participant_token() -> None:
    now = int(time.time())
    claims = ResumeClaims(
        room_id=ROOM,
        sid="PA_x",
        participant_id="bob",
        tier="speaker",
        grant=Grant(),
        epoch=1,
        expires_at=now + 60,
        room_sid="RM_1",
    )
    token = mint_resume_token(claims, API_KEY, API_SECRET, now=now)
    assert verify_resume_token(token, KEYS, now=now + 59) == claims
    with pytest.raises(ResumeRefused, match="participant token has expired"):
        verify_resume_token(token, KEYS, now=now + 60)
    later = dataclasses.replace(claims, expires_at=now + 2 * RESUME_TTL)
    token = mint_resume_token(later, API_KEY, API_SECRET, now=now)
    assert verify_resume_token(token, KEYS, now=now + RESUME_TTL - 1) == later
    with pytest.raises(ResumeRefused, match="the resume token has expired"):
        verify_resume_token(token, KEYS, now=now + RESUME_TTL)


def test_a_tampered_foreign_or_jwt_resume_token_is_refused() -> None:
    claims = ResumeClaims(
        room_id=ROOM,
        sid="PA_x",
        participant_id="bob",
        tier="viewer",
        grant=Grant(can_publish=False),
        epoch=3,
        expires_at=0,
        room_sid="RM_1",
    )
    token = mint_resume_token(claims, API_KEY, API_SECRET)
    assert len(token) < 200 and verify_resume_token(token, KEYS) == claims
    body, _, tag = token.partition(".")
    bad = [
        f"{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{tag}",  # a changed fact
        mint_resume_token(claims, API_KEY, "another secret of 32 bytes or more!!"),
        f"{body}.{tag}.x",
        "x.y.z",
    ]
    for forged in bad:
        with pytest.raises(ResumeRefused):
            verify_resume_token(forged, KEYS)
    with pytest.raises(ResumeRefused, match="unknown api key"):
        verify_resume_token(mint_resume_token(claims, "nobody", API_SECRET), KEYS)
    legacy: dict[str, object] = {
        "iss": API_KEY,
        "typ": "resume",
        "room": ROOM,
        "sid": "PA_x",
        "sub": "bob",
    }
    legacy |= {"tier": "speaker", "grant": {}, "epoch": 1, "iat": int(time.time()), "exp": 2**40}
    with pytest.raises(ResumeRefused, match="malformed"):  # the JWTs of earlier versions
        verify_resume_token(jwt.encode(legacy, API_SECRET, algorithm="HS256"), KEYS)
