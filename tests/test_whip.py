"""WHIP ingest end to end: a plain aiortc WHIP client publishes, an SDK subscriber decodes.

The publisher is not the SDK: an aiortc peer connection whose offer is POSTed to the
edge's ``/whip`` with a participant token. It appears in the room as a participant of
kind ``ingress`` with an audio and a video track; the SDK subscriber decodes both. Every
refusal (bad token, no publish grant, malformed SDP) leaves the room log as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest
from aiortc import RTCSessionDescription

import edge.ingress
import stagecast
from schemas.models import Grant
from schemas.subjects import LOG_STREAM
from tests.nats_logins import Logins
from tests.polling import eventually
from tests.stack_fixtures import WAIT, Stack, sdk_stack
from tests.test_media import Watcher
from tests.whip_client import whip_offer, whip_publish

SDPFRAG = "application/trickle-ice-sdpfrag"

ROOM = "whip-room"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, forwarders=1) as running:
        yield running


def http_url(stack: Stack) -> str:
    return stack.url.replace("ws://", "http://").replace("wss://", "https://").rstrip("/")


async def log_last_seq(stack: Stack) -> int:
    nc = await nats.connect(stack.nats.url)
    try:
        info = await nc.jetstream().stream_info(LOG_STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def test_a_whip_publisher_is_an_ingress_participant_whose_video_is_decoded(
    stack: Stack,
) -> None:
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    publisher = await whip_publish(http_url(stack), stack.token("encoder", ROOM))
    try:
        assert publisher.location.startswith("/whip/PA_")
        await seen.more_frames("encoder", "video")
        await seen.more_frames("encoder", "audio")
        assert seen.sizes == {(640, 480)}
        encoder = bob.remote_participants["encoder"]
        assert encoder.kind == "ingress"
        assert sorted(p.kind for p in encoder.track_publications.values()) == ["audio", "video"]
        left: list[str] = []
        bob.on("participant-left", lambda p: left.append(p.id))
        async with httpx.AsyncClient(base_url=http_url(stack)) as http:
            assert (await http.delete(publisher.location)).status_code == 200
            assert (await http.delete(publisher.location)).status_code == 404
        await eventually(lambda: left == ["encoder"], what="the encoder leaves", timeout=WAIT)
        service = stack.forwarders["FW_0"]
        await eventually(
            lambda: service.published_tracks == [], what="its tracks unpublished", timeout=WAIT
        )
    finally:
        await seen.close()
        await publisher.close()


async def test_an_ingress_whose_connection_never_comes_up_leaves(stack: Stack) -> None:
    stack.forwarders["FW_0"].ingress.connect_timeout = 1.0
    bob = await stack.join(stack.token("bob", ROOM))
    joined: list[str] = []
    left: list[str] = []
    bob.on("participant-joined", lambda p: joined.append(p.id))
    bob.on("participant-left", lambda p: left.append(p.id))
    pc = await whip_offer()
    async with httpx.AsyncClient(base_url=http_url(stack), timeout=30.0) as http:
        response = await http.post(
            f"/whip?room={ROOM}",
            content=pc.localDescription.sdp,
            headers={
                "authorization": f"Bearer {stack.token('ghost', None)}",
                "content-type": "application/sdp",
            },
        )
    await pc.close()  # the answer is never applied: ICE never starts
    assert response.status_code == 201, response.text
    await eventually(lambda: left == ["ghost"], what="the silent ingress leaves", timeout=WAIT)
    assert joined == ["ghost"]
    assert stack.forwarders["FW_0"].ingress.ended == 1


NO_PUBLISH = Grant(can_publish=False, can_subscribe=True)


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        ("no token", 401, "INVALID_TOKEN"),
        ("bad token", 401, "INVALID_TOKEN"),
        ("viewer", 403, "INVALID_PERMISSIONS"),
        ("no publish grant", 403, "INVALID_PERMISSIONS"),
        ("malformed", 400, "malformed SDP offer"),
        ("no media", 400, "no media"),
        ("two videos", 400, "at most one audio and one video"),
        ("not sdp", 415, "application/sdp"),
    ],
)
async def test_refusals_have_no_side_effects(
    stack: Stack, case: str, status: int, says: str
) -> None:
    bob = await stack.join(stack.token("bob", ROOM))
    pc = await whip_offer()
    offer = pc.localDescription.sdp
    await pc.close()
    token = stack.token("encoder", ROOM)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/sdp"}
    if case == "no token":
        del headers["authorization"]
    elif case == "bad token":
        headers["authorization"] = "Bearer " + token[:-4] + "AAAA"
    elif case == "viewer":
        headers["authorization"] = f"Bearer {stack.token('encoder', ROOM, viewer=True)}"
    elif case == "no publish grant":
        headers["authorization"] = f"Bearer {stack.token('encoder', ROOM, grant=NO_PUBLISH)}"
    elif case == "malformed":
        offer = "hello, I am not SDP"
    elif case == "no media":
        offer = offer.split("m=")[0]
    elif case == "two videos":
        video = "m=video" + offer.split("m=video")[1].split("m=audio")[0]
        offer = offer + video.replace("a=mid:0", "a=mid:7")
    elif case == "not sdp":
        headers["content-type"] = "text/plain"
    before = await log_last_seq(stack)
    async with httpx.AsyncClient(base_url=http_url(stack), timeout=30.0) as http:
        response = await http.post("/whip", content=offer, headers=headers)
    assert response.status_code == status, response.text
    assert says in response.text
    await asyncio.sleep(0.3)  # anything appended would be in the log by now
    assert await log_last_seq(stack) == before
    assert list(bob.remote_participants) == []
    assert stack.forwarders["FW_0"].sessions == []


async def test_the_room_list_shows_the_ingress_participant(stack: Stack) -> None:
    publisher = await whip_publish(http_url(stack), stack.token("encoder", ROOM))
    try:
        page = await stack.api.list_participants(ROOM)
        kinds = {p.id: p.kind for p in page.participants}
        assert kinds == {"encoder": "ingress"}
    finally:
        await publisher.close()
    assert isinstance(stack.api, stagecast.RoomService)


async def test_trickled_candidates_reach_the_connection_and_a_restart_is_refused(
    stack: Stack,
) -> None:
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    pc = await whip_offer()
    offer = pc.localDescription.sdp
    first = offer.split("\r\nm=")[1]
    candidates = [line for line in first.split("\r\n") if line.startswith("a=candidate:")]
    mid = next(line for line in first.split("\r\n") if line.startswith("a=mid:"))
    ufrag = next(line for line in first.split("\r\n") if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in first.split("\r\n") if line.startswith("a=ice-pwd:"))
    bare = "\r\n".join(
        line
        for line in offer.split("\r\n")
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )
    assert candidates and "a=candidate:" not in bare
    token = stack.token("encoder", ROOM)
    try:
        async with httpx.AsyncClient(base_url=http_url(stack), timeout=30.0) as http:
            response = await http.post(
                "/whip",
                content=bare,
                headers={"authorization": f"Bearer {token}", "content-type": "application/sdp"},
            )
            assert response.status_code == 201, response.text
            location, etag = response.headers["location"], response.headers["etag"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
            fragment = "\r\n".join([ufrag, pwd, "m=audio 9 UDP/TLS/RTP/SAVPF 0", mid, *candidates])
            fragment += "\r\na=end-of-candidates\r\n"
            headers = {"content-type": SDPFRAG, "if-match": etag}
            wrong = {"content-type": SDPFRAG, "if-match": '"stale"'}
            assert (await http.patch(location, content=fragment, headers=wrong)).status_code == 412
            text = {"content-type": "text/plain"}
            assert (await http.patch(location, content=fragment, headers=text)).status_code == 415
            restart = fragment.replace(ufrag, "a=ice-ufrag:fresh")
            refused = await http.patch(location, content=restart, headers=headers)
            assert refused.status_code == 422 and "ICE restarts" in refused.text
            trickled = await http.patch(location, content=fragment, headers=headers)
            assert trickled.status_code == 204, trickled.text
        forwarder = stack.forwarders["FW_0"].forwarder
        ingress = forwarder.peer_connections[0]  # publishers' come first, then legs
        assert ingress.getTransceivers()[0].direction == "recvonly"
        ice = ingress.getTransceivers()[0].receiver.transport.transport
        hosts = {(c.ip, c.port) for c in ice.getRemoteCandidates()}
        sent = {(line.split()[4], int(line.split()[5])) for line in candidates}
        assert sent <= hosts
        await seen.more_frames("encoder", "video")
    finally:
        await seen.close()
        await pc.close()


async def test_whip_runs_with_every_service_on_its_own_nats_role(tmp_path: Path) -> None:
    async with sdk_stack(tmp_path, forwarders=1, logins=Logins.fresh()) as stack:
        stack.forwarders["FW_0"].ingress.connect_timeout = 1.0
        bob = await stack.join(stack.token("bob", ROOM))
        seen = Watcher(bob)
        left: list[str] = []
        bob.on("participant-left", lambda p: left.append(p.id))
        publisher = await whip_publish(http_url(stack), stack.token("encoder", ROOM))
        silent = await whip_offer()
        try:
            await seen.more_frames("encoder", "video")  # edge -> forwarder rpc, on its role
            async with httpx.AsyncClient(base_url=http_url(stack), timeout=30.0) as http:
                response = await http.post(
                    "/whip",
                    content=silent.localDescription.sdp,
                    headers={
                        "authorization": f"Bearer {stack.token('ghost', ROOM)}",
                        "content-type": "application/sdp",
                    },
                )
            assert response.status_code == 201, response.text
            # forwarder -> the edge's session subject (IngressEnded), on its role
            await eventually(lambda: left == ["ghost"], what="the ghost leaves", timeout=WAIT)
        finally:
            await seen.close()
            await publisher.close()
            await silent.close()


async def test_an_offer_the_forwarder_refuses_is_taken_out_of_the_room_again(
    stack: Stack,
) -> None:
    pc = await whip_offer(audio=False)
    offer = pc.localDescription.sdp.replace("VP8/90000", "VP7/90000").replace(
        "packetization-mode=1", "packetization-mode=0"
    )
    await pc.close()
    async with httpx.AsyncClient(base_url=http_url(stack), timeout=30.0) as http:
        response = await http.post(
            "/whip",
            content=offer,
            headers={
                "authorization": f"Bearer {stack.token('encoder', ROOM)}",
                "content-type": "application/sdp",
            },
        )
    assert response.status_code == 400, response.text
    assert "no codec in common" in response.text

    async def nobody() -> bool:
        page = await stack.api.list_participants(ROOM)
        return list(page.participants) == []

    await eventually(nobody, what="the refused encoder out of the room")
    assert stack.forwarders["FW_0"].published_tracks == []


async def test_an_ingress_removed_by_the_server_api_ends_on_its_edge(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge.ingress, "FORWARDER_CHECK_S", 3600.0)  # the Disconnect ends it
    publisher = await whip_publish(http_url(stack), stack.token("encoder", ROOM))
    try:
        await stack.api.remove_participant(ROOM, "encoder")
        service = stack.forwarders["FW_0"]
        await eventually(lambda: service.published_tracks == [], what="its media dropped")
        async with httpx.AsyncClient(base_url=http_url(stack)) as http:

            async def forgotten() -> bool:  # an empty PATCH changes nothing: 204 or 404
                headers = {"content-type": SDPFRAG}
                response = await http.patch(publisher.location, content="", headers=headers)
                assert response.status_code in (204, 404), response.text
                return response.status_code == 404

            await eventually(forgotten, what="the edge forgets the removed session")
    finally:
        await publisher.close()
