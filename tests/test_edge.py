"""The edge against a real nats-server and statekeeper, driven by raw msgpack sockets."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from access.tokens import generate_token
from edge.metrics import sample_value
from edge.ratelimit import FloodGuard, TokenBucket
from edge.resume import ResumeRefused, verify_resume_token
from edge.sendqueue import SendQueue
from edge.wsframe import binary_frame, frame_payload
from schemas.api import (
    CreateRoomRequest,
    DeleteRoomRequest,
    GetParticipantRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    OkReply,
    ParticipantReply,
    RemoveParticipantRequest,
    RoomListReply,
    RoomReply,
    SendDataRequest,
    UpdateParticipantRequest,
    UpdateRoomMetadataRequest,
)
from schemas.client import (
    Ack,
    CountsChanged,
    DataReceived,
    Disconnect,
    Error,
    GetParticipants,
    HandChanged,
    Join,
    JoinAccepted,
    Leave,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantsPage,
    ParticipantUpdated,
    Ping,
    Pong,
    PublishData,
    PublishTrack,
    RaiseHand,
    RoomUpdated,
    SetMetadata,
    SignalOffer,
    Subscribe,
    TierChanged,
    TrackPublished,
    ViewerUpdated,
)
from schemas.codec import decode, encode
from schemas.errors import CLOSE_CODES
from schemas.models import Grant
from tests.edge_fixtures import (
    API_KEY,
    API_SECRET,
    MODERATOR,
    ROOM,
    Stack,
    edge_stack,
    stack,
)

__all__ = ["stack"]  # the fixture, re-exported for pytest


# --------------------------------------------------------------------------- joining


async def test_join_answers_a_snapshot_with_a_resume_token(stack: Stack) -> None:
    alice = await stack.join("alice", name="Alice")
    joined = alice.joined
    assert joined is not None
    assert joined.id == 1 and joined.seq > 0 and not joined.resumed
    assert joined.room.id == ROOM and joined.room.sid
    assert joined.participant.id == "alice" and joined.participant.name == "Alice"
    assert joined.participant.sid.startswith("PA_")
    assert joined.speakers == ()
    assert joined.counts.speaker == 1 and joined.counts.total == 1
    facts = verify_resume_token(joined.resume_token, {API_KEY: API_SECRET}.get)
    assert (facts.room_id, facts.sid) == (ROOM, joined.participant.sid)
    assert facts.participant_id == "alice"
    assert facts.tier == "speaker"


async def test_a_token_without_participant_id_gets_a_generated_one(stack: Stack) -> None:
    one = await stack.join(None)
    two = await stack.join(None)
    assert one.joined and two.joined
    assert one.joined.participant.id.startswith("p-")
    assert one.joined.participant.id != two.joined.participant.id


async def test_roomless_token_needs_a_room_id_and_the_token_room_must_match(
    stack: Stack,
) -> None:
    roomless = await stack.connect()
    await roomless.send(Join(id=1, token=stack.token("aud-1", None, viewer=True)))
    assert (await roomless.error(1)).code == "BAD_REQUEST"
    assert (await roomless.closed()).code == 1008

    audience = await stack.connect()
    reply = await audience.request(
        Join(id=1, token=stack.token("aud-2", None, viewer=True), room_id=ROOM)
    )
    assert isinstance(reply, JoinAccepted) and reply.room.id == ROOM

    wrong = await stack.connect()
    await wrong.send(Join(id=1, token=stack.token("bob"), room_id="another-room"))
    assert (await wrong.error(1)).code == "INVALID_PERMISSIONS"


async def test_two_speakers_see_each_other(stack: Stack) -> None:
    alice = await stack.join("alice")
    bob = await stack.join("bob")
    joined = await alice.expect(ParticipantJoined, lambda m: m.participant.id == "bob")
    assert bob.joined is not None
    assert joined.seq == bob.joined.seq
    assert [p.id for p in bob.joined.speakers] == ["alice"]
    await bob.sync()
    assert not bob.of(ParticipantJoined)  # nobody announces bob to himself


async def test_viewer_gets_speaker_events_and_counts_but_no_viewer_events(stack: Stack) -> None:
    host = await stack.join("host", grant=MODERATOR)
    viewer = await stack.join("viewer-1", viewer=True)
    speaker = await stack.join("speaker-1")
    await viewer.expect(ParticipantJoined, lambda m: m.participant.id == "speaker-1")
    other = await stack.join("viewer-2", viewer=True)
    await viewer.expect(CountsChanged, lambda m: m.counts.viewer == 2 and m.counts.speaker == 2)

    # A viewer's change goes to moderators only.
    reply = await other.request(SetMetadata(id=other.next_id(), metadata="front row"))
    assert isinstance(reply, Ack)
    update = await host.expect(ViewerUpdated, lambda m: m.participant.id == "viewer-2")
    assert update.participant.metadata == "front row"
    await viewer.sync()
    assert not viewer.of(ViewerUpdated)
    assert {m.participant.id for m in viewer.of(ParticipantJoined)} == {"speaker-1"}
    await speaker.sync()
    assert not speaker.of(ViewerUpdated)  # no can_moderate


async def test_duplicate_identity_closes_the_older_socket(stack: Stack) -> None:
    first = await stack.join("alice")
    await stack.join("alice")
    disconnect = await first.expect(Disconnect)
    assert disconnect.reason == "DUPLICATE_IDENTITY"
    closed = await first.closed()
    assert (closed.code, closed.reason) == (4011, "DUPLICATE_IDENTITY")


async def test_room_full_closes_4015(stack: Stack) -> None:
    response = await stack.api("create_room", CreateRoomRequest(room_id="tiny", max_participants=1))
    assert response.status_code == 200
    await stack.join("alice", room="tiny")
    late = await stack.connect()
    await late.send(Join(id=7, token=stack.token("bob", "tiny")))
    assert (await late.error(7)).code == "ROOM_FULL"
    assert (await late.closed()).code == 4015


@pytest.mark.parametrize(
    ("token_kind", "code", "close"),
    [("forged", "INVALID_TOKEN", 4001), ("expired", "TOKEN_EXPIRED", 4002)],
)
async def test_bad_tokens_close(stack: Stack, token_kind: str, code: str, close: int) -> None:
    if token_kind == "forged":
        token = generate_token(API_KEY, "not-the-secret-" + "x" * 32, room_id=ROOM)
    else:
        token = generate_token(
            API_KEY, API_SECRET, room_id=ROOM, participant_id="late", ttl=60, now=1_000_000_000
        )
    client = await stack.connect()
    await client.send(Join(id=3, token=token))
    error = await client.error(3)
    assert error.code == code
    closed = await client.closed()
    assert (closed.code, closed.reason) == (close, code)


async def test_token_on_the_upgrade_is_accepted(stack: Stack) -> None:
    client = await stack.connect(
        additional_headers={"Authorization": f"Bearer {stack.token('header-user')}"}
    )
    reply = await client.request(Join(id=1, token=""))
    assert isinstance(reply, JoinAccepted) and reply.participant.id == "header-user"


# --------------------------------------------------------------------------- actions


async def test_publish_track_is_acked_with_a_track_sid_and_broadcast(stack: Stack) -> None:
    alice = await stack.join("alice")
    bob = await stack.join("bob")
    ack = await alice.request(PublishTrack(id=5, kind="audio", source="microphone"))
    assert isinstance(ack, Ack) and ack.sid and ack.sid.startswith("TR_")
    published = await bob.expect(TrackPublished)
    assert published.participant_id == "alice" and published.track.sid == ack.sid


async def test_grants_are_enforced_at_the_edge(stack: Stack) -> None:
    viewer = await stack.join("viewer", viewer=True)
    reply = await viewer.request(PublishTrack(id=1, kind="video"))
    assert isinstance(reply, Error) and reply.code == "INVALID_PERMISSIONS"
    mute = await stack.join("mute", grant=Grant(can_publish_data=False, can_subscribe=False))
    reply = await mute.request(PublishData(id=2, payload=b"hi"))
    assert isinstance(reply, Error) and reply.code == "INVALID_PERMISSIONS"
    reply = await mute.request(Subscribe(id=3, participant_id="viewer", kind="audio"))
    assert isinstance(reply, Error) and reply.code == "INVALID_PERMISSIONS"
    no_publish = await stack.join("no-publish", grant=Grant(can_publish=False))
    reply = await no_publish.request(PublishTrack(id=3, kind="audio"))
    assert isinstance(reply, Error) and reply.code == "INVALID_PERMISSIONS"
    for client in (viewer, mute, no_publish):
        await client.sync()  # still open


async def test_data_routing(stack: Stack) -> None:
    alice = await stack.join("alice")
    bob = await stack.join("bob")
    carol = await stack.join("carol")
    deaf = await stack.join("deaf", grant=Grant(can_subscribe_data=False))

    reply = await alice.request(PublishData(id=1, payload=b"to-bob", destination_ids=("bob",)))
    assert isinstance(reply, Ack)
    data = await bob.expect(DataReceived)
    assert (data.payload, data.sender_id) == (b"to-bob", "alice")
    assert alice.joined and data.sender_sid == alice.joined.participant.sid

    reply = await alice.request(PublishData(id=2, payload=b"to-all", topic="chat"))
    assert isinstance(reply, Ack)
    for client in (bob, carol):
        data = await client.expect(DataReceived, lambda m: m.payload == b"to-all")
        assert data.topic == "chat"
    for client in (alice, carol, deaf):
        await client.sync()
    assert not alice.of(DataReceived)  # no echo to the sender
    assert not deaf.of(DataReceived)  # no can_subscribe_data
    assert [m.payload for m in carol.of(DataReceived)] == [b"to-all"]  # not the private one

    response = await stack.api("send_data", SendDataRequest(room_id=ROOM, payload=b"server"))
    assert isinstance(decode(response.content), OkReply)
    data = await alice.expect(DataReceived, lambda m: m.payload == b"server")
    assert data.sender_id is None


async def test_raise_hand_reaches_moderators(stack: Stack) -> None:
    host = await stack.join("host", grant=MODERATOR)
    viewer = await stack.join("viewer", viewer=True)
    assert isinstance(await viewer.request(RaiseHand(id=1)), Ack)
    hand = await host.expect(HandChanged)
    assert hand.raised and hand.participant.id == "viewer"
    assert hand.participant.attributes == {"hand": "raised"}


async def test_get_participants_ping_and_media_without_forwarders(stack: Stack) -> None:
    alice = await stack.join("alice")
    await stack.join("viewer", viewer=True)
    page = await alice.request(GetParticipants(id=9, limit=10))
    assert isinstance(page, ParticipantsPage) and page.id == 9
    assert [p.id for p in page.participants] == ["alice", "viewer"] and page.total == 2
    bad = await alice.request(GetParticipants(id=10, limit=0))
    assert isinstance(bad, Error) and bad.id == 10 and bad.code == "BAD_REQUEST"
    pong = await alice.request(Ping(id=11, at=42))
    assert isinstance(pong, Pong) and pong.at == 42 and pong.server_at > 0
    unnamed = await alice.request(SignalOffer(id=12, target="publisher", sdp="v=0"))
    assert isinstance(unnamed, Error) and unnamed.code == "BAD_REQUEST"
    unknown = await alice.request(
        SignalOffer(id=13, target="publisher", sdp="v=0", track_sid="TR_nope")
    )
    assert isinstance(unknown, Error) and (unknown.id, unknown.code) == (13, "TRACK_NOT_FOUND")
    announced = await alice.request(PublishTrack(id=14, kind="video"))
    assert isinstance(announced, Ack) and announced.sid
    no_forwarder = await alice.request(
        SignalOffer(id=15, target="publisher", sdp="v=0", track_sid=announced.sid)
    )
    assert isinstance(no_forwarder, Error) and no_forwarder.code == "UNAVAILABLE"


async def test_leave_acks_then_closes_1000(stack: Stack) -> None:
    alice = await stack.join("alice")
    bob = await stack.join("bob")
    assert isinstance(await bob.request(Leave(id=4)), Ack)
    closed = await bob.closed()
    assert (closed.code, closed.reason) == (1000, "CLIENT_LEFT")
    left = await alice.expect(ParticipantLeft)
    assert left.participant_id == "bob" and left.reason == "CLIENT_LEFT"


async def test_resume_after_a_dropped_socket_keeps_the_session(stack: Stack) -> None:
    alice = await stack.join("alice")
    bob = await stack.join("bob")
    assert bob.joined is not None
    sid = bob.joined.participant.sid
    await bob.ws.close()  # dropped without `leave`

    again = await stack.connect()
    reply = await again.request(Join(id=1, token="", resume=bob.joined.resume_token), timeout=10.0)
    assert isinstance(reply, JoinAccepted) and reply.resumed
    assert reply.participant.sid == sid and reply.participant.id == "bob"
    assert reply.resume_token and [p.id for p in reply.speakers] == ["alice"]

    assert isinstance(await again.request(SetMetadata(id=2, metadata="back")), Ack)
    update = await alice.expect(ParticipantUpdated)
    assert update.participant.sid == sid and update.participant.metadata == "back"
    assert not alice.of(ParticipantLeft)
    assert len(alice.of(ParticipantJoined)) == 1  # bob's first join only


async def test_a_forged_resume_token_closes_4016(stack: Stack) -> None:
    client = await stack.connect()
    await client.send(Join(id=1, token="", resume="not.a.token"))
    assert (await client.error(1)).code == "RESUME_FAILED"
    assert (await client.closed()).code == 4016


# --------------------------------------------------------------------------- server API


async def test_server_api(stack: Stack) -> None:
    response = await stack.api("create_room", CreateRoomRequest(room_id="stage", metadata="m"))
    assert response.status_code == 200, response.content
    room = decode(response.content)
    assert isinstance(room, RoomReply) and room.room.id == "stage"
    assert room.room.sid.startswith("RM_")

    listed = decode((await stack.api("list_rooms", ListRoomsRequest())).content)
    assert isinstance(listed, RoomListReply) and [r.id for r in listed.rooms] == ["stage"]

    host = await stack.join("host", room="stage")
    audience = await stack.join("aud", room="stage", viewer=True)
    request = GetParticipantRequest(room_id="stage", participant_id="aud")
    got = decode((await stack.api("get_participant", request)).content)
    assert isinstance(got, ParticipantReply) and got.participant.is_viewer

    page = decode(
        (await stack.api("list_participants", ListParticipantsRequest(room_id="stage"))).content
    )
    assert isinstance(page, ParticipantsPage) and page.total == 2

    # Promotion: the viewer moves to the stage live, with its new grant and a fresh token.
    promote = UpdateParticipantRequest(
        room_id="stage", participant_id="aud", is_viewer=False, grant=Grant()
    )
    promoted = decode((await stack.api("update_participant", promote)).content)
    assert isinstance(promoted, ParticipantReply) and not promoted.participant.is_viewer
    changed = await audience.expect(TierChanged)
    assert not changed.participant.is_viewer and changed.grant.can_publish
    facts = verify_resume_token(changed.resume_token, {API_KEY: API_SECRET}.get)
    assert facts.tier == "speaker"
    await host.expect(ParticipantJoined, lambda m: m.participant.id == "aud")
    ack = await audience.request(PublishTrack(id=audience.next_id(), kind="video"))
    assert isinstance(ack, Ack), ack

    meta = await stack.api(
        "update_room_metadata", UpdateRoomMetadataRequest(room_id="stage", metadata="live")
    )
    assert isinstance(decode(meta.content), RoomReply)
    assert (await host.expect(RoomUpdated)).room.metadata == "live"

    remove = RemoveParticipantRequest(room_id="stage", participant_id="aud")
    removed = await stack.api("remove_participant", remove)
    assert isinstance(decode(removed.content), OkReply)
    assert (await audience.expect(Disconnect)).reason == "REMOVED"
    assert (await audience.closed()).code == 4012

    deleted = await stack.api("delete_room", DeleteRoomRequest(room_id="stage"))
    assert isinstance(decode(deleted.content), OkReply)
    assert (await host.expect(Disconnect)).reason == "ROOM_DELETED"
    assert (await host.closed()).code == 4013

    missing = await stack.api("get_participant", request)
    assert missing.status_code == 404
    error = decode(missing.content)
    assert isinstance(error, Error) and error.code == "ROOM_NOT_FOUND"


async def test_server_api_refuses_unsigned_and_malformed_requests(stack: Stack) -> None:
    unsigned = await stack.api("list_rooms", ListRoomsRequest(), auth=False)
    assert unsigned.status_code == 401
    assert decode(unsigned.content).code == "INVALID_TOKEN"  # type: ignore[attr-defined]

    async with httpx.AsyncClient(base_url=stack.url) as http:
        participant = {"Authorization": f"Bearer {stack.token('alice')}"}
        as_participant = await http.post(
            "/api/list_rooms", content=encode(ListRoomsRequest()), headers=participant
        )
        assert as_participant.status_code == 403
        garbage = await http.post(
            "/api/list_rooms", content=b"\xc1nope", headers=stack.admin_headers()
        )
        assert garbage.status_code == 400
        mismatched = await http.post(
            "/api/delete_room", content=encode(ListRoomsRequest()), headers=stack.admin_headers()
        )
        assert mismatched.status_code == 400


# --------------------------------------------------------------------------- HTTP


def _python_info(metrics: str) -> dict[str, str]:
    line = next(x for x in metrics.splitlines() if x.startswith("python_info{"))
    return dict(re.findall(r'(\w+)="([^"]*)"', line))


async def test_healthz_metrics_and_home(stack: Stack) -> None:
    await stack.join("alice")
    async with httpx.AsyncClient(base_url=stack.url) as http:
        health = await http.get("/healthz")
        assert (health.status_code, health.text) == (200, "ok")
        home = await http.get("/")
        assert home.status_code == 200 and "Stagecast" in home.text and "/healthz" in home.text
        metrics = (await http.get("/metrics")).text
    values = {
        ("stagecast_edge_sockets", ""): 1,
        ("stagecast_edge_rooms", ""): 1,
        ("stagecast_edge_joins_total", ""): 1,
        ("stagecast_edge_frames_in_total", "join"): 1,
        ("stagecast_edge_frames_out_total", "joined"): 1,
        ("stagecast_edge_queue_drops_total", ""): 0,
    }
    for (name, type_tag), want in values.items():
        labels = {"type": type_tag} if type_tag else {}
        assert sample_value(metrics, name, **labels) == want, f"{name} in\n{metrics}"
    assert "# TYPE stagecast_edge_errors_total counter" in metrics
    # prometheus_client's own collectors come along.
    assert (sample_value(metrics, "process_resident_memory_bytes") or 0) > 0
    assert sample_value(metrics, "python_info", **_python_info(metrics)) == 1


async def test_healthz_is_503_without_a_statekeeper(tmp_path: Path) -> None:
    from edge.config import EdgeConfig
    from edge.main import running_edge
    from processes.natsserver import NatsServer

    async with NatsServer(tmp_path / "nats") as server:
        config = EdgeConfig(nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        async with running_edge(config) as url, httpx.AsyncClient(base_url=url) as http:
            health = await http.get("/healthz")
    assert health.status_code == 503 and "statekeeper" in health.text


async def test_stopping_the_edge_closes_sockets_4017(tmp_path: Path) -> None:
    async with edge_stack(tmp_path) as running:
        alice = await running.join("alice")
        running.clients.remove(alice)  # keep it open until the edge stops
    try:
        disconnect = await alice.expect(Disconnect)
        assert disconnect.reason == "SERVER_SHUTDOWN" and disconnect.can_reconnect
        assert (await alice.closed()).code == 4017
    finally:
        await alice.close()


# --------------------------------------------------------------------------- pure parts


class MemorySink:
    """An in-memory `FrameSink`: frames and closes in lists; `paused` stands for a full
    transport buffer."""

    def __init__(self) -> None:
        self.on_writable: Callable[[], None] | None = None
        self.frames: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.paused = False
        self.dropped = False

    @property
    def ready(self) -> bool:
        return not (self.paused or self.gone)

    @property
    def gone(self) -> bool:
        return bool(self.closes) or self.dropped

    def write(self, frame: bytes) -> None:
        assert not self.gone
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def drop(self) -> None:
        self.dropped = True

    def resume(self) -> None:
        self.paused = False
        if self.on_writable is not None:
            self.on_writable()


def test_send_queue_writes_at_once_and_queues_only_while_paused() -> None:
    sink = MemorySink()
    queue = SendQueue(4, sink)
    assert queue.put(b"a") and queue.put_counts(b"c0")
    assert sink.frames == [b"a", b"c0"] and len(queue) == 0  # straight to the transport
    sink.paused = True
    assert queue.put(b"b") and queue.put_counts(b"c1") and queue.put(b"d")
    assert queue.put_counts(b"c2")  # replaces c1 in its place in line
    queue.close_after(1000, "CLIENT_LEFT")
    assert not queue.put(b"late") and len(queue) == 4 and not queue.finished
    sink.resume()
    assert sink.frames == [b"a", b"c0", b"b", b"c2", b"d"]
    assert sink.closes == [(1000, "CLIENT_LEFT")] and queue.finished


def test_send_queue_closes_a_slow_consumer() -> None:
    overflows: list[bool] = []
    finished: list[bool] = []
    sink = MemorySink()
    slow = SendQueue(2, sink, lambda: overflows.append(True))
    slow.on_finished = lambda: finished.append(True)
    sink.paused = True
    assert slow.put(b"1") and slow.put(b"2")
    assert not slow.put(b"3")  # full: never dropped silently
    assert overflows == [True] and slow.closing and finished == [True]
    sink.resume()
    assert sink.frames == [] and sink.closes == [(4010, "SLOW_CONSUMER")]


def test_send_queue_finishes_when_the_socket_is_gone() -> None:
    sink = MemorySink()
    queue = SendQueue(4, sink)
    sink.paused = True
    assert queue.put(b"1")
    queue.close_after(1000, "CLIENT_LEFT")
    sink.dropped = True
    sink.resume()  # the transport reports the loss the same way
    assert queue.finished and sink.frames == [] and sink.closes == []
    assert not queue.put(b"2")


def test_flood_guard() -> None:
    now = [0.0]
    guard = FloodGuard(TokenBucket(10, 5, clock=lambda: now[0]), close_after=20)
    assert all(guard.admit() for _ in range(5))
    assert not guard.admit()
    for _ in range(100):  # a sustained flood: trickling tokens do not reset the count
        now[0] += 0.01
        guard.admit()
    assert guard.flooding
    now[0] += 10  # quiet for a while
    assert guard.admit() and not guard.flooding


def test_resume_tokens_are_verified() -> None:
    with pytest.raises(ResumeRefused):
        participant_token = generate_token(API_KEY, API_SECRET, room_id=ROOM)
        verify_resume_token(participant_token, {API_KEY: API_SECRET}.get)
    with pytest.raises(ResumeRefused):
        verify_resume_token("x.y.z", {API_KEY: API_SECRET}.get)
    assert CLOSE_CODES["SERVER_SHUTDOWN"] == 4017


async def test_resume_on_the_same_edge_closes_the_stale_socket(stack: Stack) -> None:
    alice = await stack.join("alice")
    stale = await stack.join("bob")
    assert stale.joined is not None
    fresh = await stack.connect()
    reply = await fresh.request(Join(id=1, token="", resume=stale.joined.resume_token))
    assert isinstance(reply, JoinAccepted) and reply.resumed
    assert reply.participant.sid == stale.joined.participant.sid
    assert (await stale.expect(Disconnect)).reason == "RESUME_FAILED"
    assert (await stale.closed()).code == 4016
    assert isinstance(await fresh.request(SetMetadata(id=2, metadata="moved")), Ack)
    await alice.expect(ParticipantUpdated, lambda m: m.participant.metadata == "moved")
    assert not alice.of(ParticipantLeft)


class FakeMember:
    """A local socket as the fan-out sees it."""

    def __init__(self, sid: str, participant_id: str, grant: Grant) -> None:
        self.sid = sid
        self.participant_id = participant_id
        self.grant = grant
        self.frames: list[bytes] = []
        self.counts: list[bytes] = []
        self.voice: list[bytes] = []
        self.ended: list[str] = []

    def deliver(self, data: bytes, type_tag: str, seq: int | None) -> None:
        self.frames.append(data)

    def deliver_counts(self, frame: bytes, seq: int) -> bool:
        self.counts.append(frame)
        return True

    def deliver_voice(self, frame: bytes, seq: int) -> bool:
        self.voice.append(frame)
        return True

    def room_ended(self, data: bytes, reason: str) -> None:
        self.ended.append(reason)


async def test_room_fanout_routes_dedupes_and_filters() -> None:
    from edge.fanout import RoomFanout
    from edge.metrics import EdgeMetrics
    from schemas.models import Counts, ParticipantInfo

    room = RoomFanout(ROOM, EdgeMetrics())
    host = FakeMember("PA_h", "host", MODERATOR)
    viewer = FakeMember("PA_v", "viewer", Grant(can_publish=False))
    deaf = FakeMember("PA_d", "deaf", Grant(can_subscribe_data=False))
    for member in (host, viewer, deaf):
        room.members[member.sid] = member

    def joined(seq: int, pid: str) -> tuple[ParticipantJoined, bytes]:
        message = ParticipantJoined(seq=seq, participant=ParticipantInfo(sid=f"PA_{pid}", id=pid))
        return message, encode(message)

    for seq, pid in [(5, "a"), (5, "b"), (6, "c"), (5, "a"), (6, "c"), (4, "z")]:
        room.route("speakers", *joined(seq, pid))  # a restarted statekeeper replays 5 and 6
    ids = [decode(frame_payload(f)).participant.id for f in viewer.frames]  # type: ignore[attr-defined]
    assert ids == ["a", "b", "c"]
    # Framed once for the edge: every member gets the same bytes object, as it arrived.
    assert all(a is b for a, b in zip(viewer.frames, host.frames, strict=True))
    assert frame_payload(viewer.frames[0]) == joined(5, "a")[1]

    hand = HandChanged(seq=7, participant=ParticipantInfo(sid="PA_v", id="viewer"), raised=True)
    room.route("mod", hand, encode(hand))
    assert len(host.frames) == 4 and len(viewer.frames) == 3  # moderators only

    counts = CountsChanged(seq=7, counts=Counts(speaker=1, viewer=2, total=3))
    room.route("counts", counts, encode(counts))
    stale = CountsChanged(seq=6, counts=Counts())
    room.route("counts", stale, encode(stale))
    assert host.counts == viewer.counts == [binary_frame(encode(counts))]
    assert host.counts[0] is viewer.counts[0]

    data = DataReceived(payload=b"x", sender_id="host", sender_sid="PA_h", destination_ids=())
    room.route("data", data, encode(data))
    assert (len(host.frames), len(viewer.frames), len(deaf.frames)) == (4, 4, 3)
    private = DataReceived(
        payload=b"y", sender_id="viewer", sender_sid="PA_v", destination_ids=("deaf", "host")
    )
    room.route("data", private, encode(private))
    assert (len(host.frames), len(viewer.frames), len(deaf.frames)) == (5, 4, 3)

    gone = Disconnect(reason="ROOM_DELETED")
    room.route("speakers", gone, encode(gone))
    assert host.ended == viewer.ended == deaf.ended == ["ROOM_DELETED"]
