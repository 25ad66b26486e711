"""The forwarder service over a real nats-server, with real aiortc peers as its clients.

The test plays the statekeeper (it sends `MediaSession` states on the forwarder's sessions
subject) and the edge (it sends signaling requests on the rpc subject and listens on each
session's subject for the subscriber offers the forwarder pushes). Each client peer
connection carries one track, as in the product; aiortc's synthetic video and audio are
decoded by the subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from forwarder.main import running_forwarder
from forwarder.service import ForwarderService
from schemas.client import Error, PublishedLayer, SignalOffer, SimulcastRid
from schemas.codec import Message, decode, encode
from schemas.media import (
    ForwarderOk,
    ForwarderSdp,
    MediaCandidate,
    MediaSession,
    MediaSubscribedTrack,
    MediaTrackState,
    PublisherLayers,
    PublishOffer,
    RelayStart,
    RestartSubscription,
    SubscriberAnswer,
)
from schemas.models import TrackKind
from schemas.subjects import forwarder_rpc, forwarder_sessions
from tests.heartbeats import Heartbeats
from tests.polling import eventually, settled

ROOM = "room-1"
FW = "FW_test"
WAIT = 15.0


def peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class Client:
    """One session's side of the media: what its edge and its aiortc peers would do.

    `publish` opens one peer connection per track (a `PublishOffer` to the forwarder);
    every `SignalOffer` pushed on the session subject is answered at once (a new offer for
    a track replaces its connection) and the track's frames are counted.
    """

    def __init__(self, nc: NATS, sid: str, forwarder_id: str = FW) -> None:
        self.nc = nc
        self.sid = sid
        self.forwarder_id = forwarder_id
        self.subject = f"test.sess.{sid}"
        self.seq = 0
        self.publishers: dict[str, RTCPeerConnection] = {}
        self.viewers: dict[str, RTCPeerConnection] = {}
        self.frames: dict[str, int] = {}
        self.offers: list[SignalOffer] = []
        self.answer_replies: list[Message] = []
        self._closed: list[RTCPeerConnection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None

    async def start(self) -> Client:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_offer)
        await self.nc.flush()
        return self

    async def request(self, message: Message, forwarder_id: str | None = None) -> Message:
        subject = forwarder_rpc(forwarder_id or self.forwarder_id)
        reply = await self.nc.request(subject, encode(message), timeout=WAIT)
        return decode(reply.data)

    async def publish(
        self,
        track_sid: str,
        kind: TrackKind,
        *,
        ice_restart: bool = False,
        codecs: Sequence[str] | None = None,
    ) -> Message:
        """Offer a new connection sending one synthetic track; the forwarder's reply."""
        pc = peer()
        track = VideoStreamTrack() if kind == "video" else AudioStreamTrack()
        transceiver = pc.addTransceiver(track, direction="sendonly")
        if codecs is not None:
            capabilities = RTCRtpSender.getCapabilities(kind).codecs
            transceiver.setCodecPreferences([c for c in capabilities if c.name in codecs])
        await pc.setLocalDescription(await pc.createOffer())
        reply = await self.request(
            PublishOffer(
                room_id=ROOM,
                sid=self.sid,
                track_sid=track_sid,
                kind=kind,
                sdp=pc.localDescription.sdp,
                ice_restart=ice_restart,
            )
        )
        if not isinstance(reply, ForwarderSdp):
            await pc.close()
            return reply
        await pc.setRemoteDescription(RTCSessionDescription(reply.sdp, "answer"))
        old = self.publishers.get(track_sid)
        self.publishers[track_sid] = pc
        if old is not None:
            self._closed.append(old)
            await old.close()
        return reply

    async def desire(
        self,
        *,
        tracks: Sequence[MediaTrackState] = (),
        subscriptions: Sequence[MediaSubscribedTrack] = (),
        closed: bool = False,
        seq: int | None = None,
        forwarder_id: str | None = None,
    ) -> MediaSession:
        """Send this session's desired state (the next seq unless given)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        state = MediaSession(
            room_id=ROOM,
            sid=self.sid,
            identity=f"id-{self.sid}",
            subject=self.subject,
            seq=seq,
            tracks=tuple(tracks),
            subscriptions=tuple(subscriptions),
            closed=closed,
        )
        await self.nc.publish(forwarder_sessions(forwarder_id or self.forwarder_id), encode(state))
        await self.nc.flush()
        return state

    def decoded(self, *track_sids: str, at_least: int = 1) -> Callable[[], bool]:
        return lambda: all(self.frames.get(t, 0) >= at_least for t in track_sids)

    async def more_frames(self, track_sid: str, n: int = 10) -> None:
        start = self.frames.get(track_sid, 0)
        await eventually(
            lambda: self.frames.get(track_sid, 0) >= start + n,
            what=f"{n} more frames of {track_sid} at {self.sid}",
            timeout=WAIT,
        )

    async def _on_offer(self, msg: Msg) -> None:
        offer = decode(msg.data)
        assert isinstance(offer, SignalOffer) and offer.target == "subscriber", offer
        self.offers.append(offer)
        task = asyncio.create_task(self._answer(offer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, offer: SignalOffer) -> None:
        assert offer.track_sid is not None
        track_sid = offer.track_sid
        old = self.viewers.pop(track_sid, None)
        if old is not None:
            self._closed.append(old)
            await old.close()
        pc = peer()
        self.viewers[track_sid] = pc
        self.frames.setdefault(track_sid, 0)
        pc.on("track", lambda track: self._consume(track_sid, track))
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        reply = await self.request(
            SubscriberAnswer(
                room_id=ROOM, sid=self.sid, track_sid=track_sid, sdp=pc.localDescription.sdp
            )
        )
        self.answer_replies.append(reply)

    def _consume(self, track_sid: str, track: Any) -> None:
        async def run() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()
                    self.frames[track_sid] = self.frames.get(track_sid, 0) + 1

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pc in [*self.publishers.values(), *self.viewers.values(), *self._closed]:
            await asyncio.wait_for(pc.close(), WAIT)


def subscribed(
    track_sid: str, kind: TrackKind, publisher: Client, forwarder_id: str = FW
) -> MediaSubscribedTrack:
    return MediaSubscribedTrack(
        track_sid=track_sid,
        kind=kind,
        publisher_id=f"id-{publisher.sid}",
        publisher_sid=publisher.sid,
        forwarder_id=forwarder_id,
    )


@pytest.fixture
async def service(nats_url: str, heartbeats: Heartbeats) -> AsyncIterator[ForwarderService]:
    async with running_forwarder(nats_url, forwarder_id=FW, heartbeat_interval=0.2) as running:
        yield running


@pytest.fixture
async def clients(nc: NATS) -> AsyncIterator[Callable[[str], Any]]:
    made: list[Client] = []

    async def make(sid: str) -> Client:
        client = await Client(nc, sid).start()
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


async def _alice_and_bob(clients: Callable[[str], Any]) -> tuple[Client, Client]:
    """alice publishes a camera and a microphone, bob subscribes to both and decodes them."""
    alice, bob = await clients("alice"), await clients("bob")
    await alice.desire(tracks=[MediaTrackState(track_sid="TR_cam", kind="video")])
    assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)
    await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice)])
    await eventually(bob.decoded("TR_cam", at_least=5), what="bob decoding", timeout=WAIT)
    return alice, bob


# --------------------------------------------------------------------------- tests


async def test_publish_and_subscribe_decode_video_and_audio(
    service: ForwarderService, clients: Callable[[str], Any], heartbeats: Heartbeats
) -> None:
    alice, bob = await clients("alice"), await clients("bob")
    # bob's subscriptions come before alice's offers: they wait, then are served
    await bob.desire(
        subscriptions=[
            subscribed("TR_cam", "video", alice),
            subscribed("TR_mic", "audio", alice),
        ]
    )
    await alice.desire(
        tracks=[
            MediaTrackState(track_sid="TR_cam", kind="video"),
            MediaTrackState(track_sid="TR_mic", kind="audio"),
        ]
    )
    await asyncio.sleep(0.2)
    assert bob.offers == []  # nothing published yet
    assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)
    assert isinstance(await alice.publish("TR_mic", "audio"), ForwarderSdp)

    await eventually(
        bob.decoded("TR_cam", "TR_mic", at_least=10), what="video and audio at bob", timeout=WAIT
    )
    assert {(o.track_sid, o.kind, o.participant_id, o.id) for o in bob.offers} == {
        ("TR_cam", "video", "id-alice", 0),
        ("TR_mic", "audio", "id-alice", 0),
    }
    assert all(isinstance(r, ForwarderOk) for r in bob.answer_replies)
    assert sorted(service.published_tracks) == ["TR_cam", "TR_mic"]
    assert service.peer_connections == 4  # one per published track, one per leg

    def beat_shows_the_load() -> bool:
        beat = heartbeats.last(FW)
        return (
            beat is not None
            and (beat.peer_connections, beat.published_tracks, beat.legs) == (4, 2, 2)
            and beat.packets_per_s > 0
            and beat.interval_ms == 200
        )

    await eventually(beat_shows_the_load, what="a heartbeat with the load", timeout=WAIT)


async def test_mute_stops_packets_and_unmute_resumes(
    service: ForwarderService, clients: Callable[[str], Any]
) -> None:
    alice, bob = await _alice_and_bob(clients)
    router = service.forwarder.router

    muted = await alice.desire(
        tracks=[MediaTrackState(track_sid="TR_cam", kind="video", muted=True)]
    )
    await eventually(lambda: router.stats("TR_cam").muted, what="muted on the router")
    forwarded = await settled(
        lambda: router.stats("TR_cam").packets_forwarded, what="packets while muted"
    )
    dropped = router.stats("TR_cam").packets_dropped_muted
    frames = await settled(lambda: bob.frames["TR_cam"], what="bob's frames while muted")
    # an older state (unmuted) arriving late changes nothing
    await alice.desire(
        tracks=[MediaTrackState(track_sid="TR_cam", kind="video")], seq=muted.seq - 1
    )
    await asyncio.sleep(0.5)
    stats = router.stats("TR_cam")
    assert stats.muted and stats.packets_forwarded == forwarded
    assert stats.packets_dropped_muted > dropped
    assert bob.frames["TR_cam"] == frames

    await alice.desire(tracks=[MediaTrackState(track_sid="TR_cam", kind="video")])
    await bob.more_frames("TR_cam")
    assert router.stats("TR_cam").packets_forwarded > forwarded


async def test_mute_state_waits_for_a_late_offer(
    service: ForwarderService, clients: Callable[[str], Any]
) -> None:
    alice = await clients("alice")
    await alice.desire(tracks=[MediaTrackState(track_sid="TR_mic", kind="audio", muted=True)])
    await asyncio.sleep(0.1)
    assert isinstance(await alice.publish("TR_mic", "audio"), ForwarderSdp)
    router = service.forwarder.router
    assert router.stats("TR_mic").muted
    await eventually(
        lambda: router.stats("TR_mic").packets_dropped_muted > 0, what="packets dropped"
    )


async def test_unsubscribe_unpublish_and_close_leave_nothing_behind(
    nats_url: str, clients: Callable[[str], Any], nc: NATS
) -> None:
    with contextlib.suppress(Exception):  # the test client's own reply inbox task, made now
        await nc.request("test.warm-up", b"", timeout=0.5)
    tasks_before = asyncio.all_tasks()
    async with running_forwarder(nats_url, forwarder_id=FW, heartbeat_interval=0.2) as service:
        alice, bob = await _alice_and_bob(clients)
        carol = await clients("carol")
        assert isinstance(await alice.publish("TR_mic", "audio"), ForwarderSdp)
        await alice.desire(
            tracks=[
                MediaTrackState(track_sid="TR_cam", kind="video"),
                MediaTrackState(track_sid="TR_mic", kind="audio"),
            ]
        )
        await bob.desire(
            subscriptions=[
                subscribed("TR_cam", "video", alice),
                subscribed("TR_mic", "audio", alice),
            ]
        )
        await carol.desire(subscriptions=[subscribed("TR_cam", "video", alice)])
        await eventually(bob.decoded("TR_mic", at_least=5), what="bob's audio", timeout=WAIT)
        await eventually(carol.decoded("TR_cam", at_least=5), what="carol's video", timeout=WAIT)
        assert service.peer_connections == 5
        router = service.forwarder.router

        # bob drops the video: its leg's connection closes, the audio stays
        await bob.desire(subscriptions=[subscribed("TR_mic", "audio", alice)])
        await eventually(lambda: service.peer_connections == 4, what="bob's video leg closes")
        assert len(router.legs("TR_cam")) == 1
        await settled(lambda: bob.frames["TR_cam"], what="bob's video after unsubscribing")
        await bob.more_frames("TR_mic")

        # alice unpublishes the camera: its connection and carol's leg close
        await alice.desire(tracks=[MediaTrackState(track_sid="TR_mic", kind="audio")])
        await eventually(lambda: service.peer_connections == 2, what="the camera's connections")
        assert router.track_ids == ["TR_mic"]
        late = await alice.publish("TR_cam", "video")  # a late offer for it is refused
        assert isinstance(late, Error) and late.code == "TRACK_NOT_FOUND", late

        # bob's session closes: its audio leg goes; then alice's: nothing is left
        await bob.desire(closed=True)
        await eventually(lambda: service.peer_connections == 1, what="bob's audio leg closes")
        await alice.desire(closed=True)
        await eventually(lambda: service.peer_connections == 0, what="alice's connection closes")
        assert router.track_ids == []
        await carol.desire(closed=True)
        await eventually(lambda: service.sessions == [], what="every session dropped")
        ignored = service.sessions_ignored
        await bob.desire(subscriptions=[subscribed("TR_mic", "audio", alice)])
        await eventually(lambda: service.sessions_ignored > ignored, what="the state ignored")
        assert service.sessions == []  # a closed session does not come back
    assert service.forwarder.peer_connections == []
    for client in (alice, bob, carol):
        await client.close()

    def leftovers() -> set[asyncio.Task[Any]]:
        current = asyncio.current_task()
        return {t for t in asyncio.all_tasks() - tasks_before if not t.done() and t is not current}

    await eventually(lambda: not leftovers(), what="no tasks left", timeout=5)


async def test_an_ice_restart_replaces_the_publisher_and_subscribers_keep_decoding(
    service: ForwarderService, clients: Callable[[str], Any]
) -> None:
    alice, bob = await _alice_and_bob(clients)
    router = service.forwarder.router
    first = alice.publishers["TR_cam"]
    requests = router.stats("TR_cam").keyframe_requests

    reply = await alice.publish("TR_cam", "video", ice_restart=True)
    assert isinstance(reply, ForwarderSdp)
    assert first.connectionState == "closed"  # the client let the old one go
    await bob.more_frames("TR_cam", 20)
    assert service.peer_connections == 2  # replaced, not added
    assert router.legs("TR_cam") == [service.subscriber_leg(ROOM, "bob", "TR_cam").leg_id]
    assert router.stats("TR_cam").keyframe_requests > requests  # bob's leg restarted at one
    assert len(bob.offers) == 1  # bob's connection was never renegotiated

    # a second offer without the flag replaces too; one in another codec is refused
    assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)
    await bob.more_frames("TR_cam", 10)
    refused = await alice.publish("TR_cam", "video", codecs=["H264"])
    assert isinstance(refused, Error) and refused.code == "BAD_REQUEST", refused
    assert "VP8" in refused.message
    await bob.more_frames("TR_cam", 10)


async def test_loss_on_a_leg_is_repaired_by_nack_and_rtx(
    service: ForwarderService, clients: Callable[[str], Any]
) -> None:
    _alice, bob = await _alice_and_bob(clients)
    stream = service.subscriber_leg(ROOM, "bob", "TR_cam").stream
    assert stream is not None and stream.rtx_payload_type is not None
    (transceiver,) = bob.viewers["TR_cam"].getTransceivers()
    receiver = transceiver.receiver
    nacks: list[list[int]] = []
    send_nack = receiver._send_rtcp_nack

    async def nack_spy(media_ssrc: int, lost: list[int]) -> None:
        nacks.append(lost)
        await send_nack(media_ssrc, lost)

    setattr(receiver, "_send_rtcp_nack", nack_spy)  # noqa: B010 - a spy on the client side
    stream.drop = lambda seq: seq % 20 == 7  # 5 % of the leg's packets never leave

    frames = bob.frames["TR_cam"]
    await eventually(
        lambda: stream.retransmissions >= 5 and stream.packets_dropped >= 5,
        what="five packets lost and retransmitted",
        timeout=WAIT,
    )
    await bob.more_frames("TR_cam", 30)
    assert nacks, "the subscriber sent no NACK"
    assert stream.retransmit_requests >= stream.retransmissions > 0
    assert bob.frames["TR_cam"] > frames + 30
    print(
        f"dropped {stream.packets_dropped} of {stream.packets_sent + stream.packets_dropped}, "
        f"{len(nacks)} NACKs, {stream.retransmissions} retransmitted"
    )


async def test_a_subscription_restart_offers_a_new_connection(
    service: ForwarderService, clients: Callable[[str], Any]
) -> None:
    _alice, bob = await _alice_and_bob(clients)
    before = service.subscriber_leg(ROOM, "bob", "TR_cam")
    ok = await bob.request(RestartSubscription(room_id=ROOM, sid="bob", track_sid="TR_cam"))
    assert isinstance(ok, ForwarderOk)
    await eventually(lambda: len(bob.offers) == 2, what="a second offer")
    await bob.more_frames("TR_cam", 10)
    assert service.subscriber_leg(ROOM, "bob", "TR_cam") is not before
    assert service.peer_connections == 2


async def test_bad_input_gets_named_errors_and_the_others_keep_forwarding(
    service: ForwarderService, clients: Callable[[str], Any], nc: NATS
) -> None:
    alice, bob = await _alice_and_bob(clients)
    mallory = await clients("mallory")

    async def raw(data: bytes) -> Message:
        return decode((await nc.request(forwarder_rpc(FW), data, timeout=WAIT)).data)

    def code(reply: Message) -> str:
        assert isinstance(reply, Error), reply
        return reply.code

    assert code(await raw(b"\xc1 not msgpack")) == "BAD_REQUEST"
    assert code(await raw(encode(ForwarderOk()))) == "UNKNOWN_TYPE"
    assert code(await raw(b"\x81\xa1t\xa9no.such.t")) == "UNKNOWN_TYPE"
    session = MediaSession(room_id=ROOM, sid="x", identity="x", subject="s", seq=1)
    assert code(await raw(encode(session))) == "UNKNOWN_TYPE"  # it belongs on .sessions

    async def offer_sdp(*tracks: Any) -> str:
        pc = peer()
        for track in tracks:
            pc.addTransceiver(track, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return str(pc.localDescription.sdp)

    two_lines = await offer_sdp(VideoStreamTrack(), AudioStreamTrack())
    video_only = await offer_sdp(VideoStreamTrack())

    def offer(sdp: str, kind: TrackKind = "video", track_sid: str = "TR_m") -> PublishOffer:
        return PublishOffer(room_id=ROOM, sid="mallory", track_sid=track_sid, kind=kind, sdp=sdp)

    assert code(await mallory.request(offer(two_lines))) == "BAD_REQUEST"
    assert code(await mallory.request(offer("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"))) == (
        "BAD_REQUEST"
    )
    assert code(await mallory.request(offer(video_only, kind="audio"))) == "BAD_REQUEST"
    stolen = await mallory.publish("TR_cam", "video")  # alice's track sid
    assert code(stolen) == "BAD_REQUEST"

    answer = SubscriberAnswer(room_id=ROOM, sid="bob", track_sid="TR_none", sdp="v=0\r\n")
    assert code(await bob.request(answer)) == "TRACK_NOT_FOUND"
    nobody = SubscriberAnswer(room_id=ROOM, sid="nobody", track_sid="TR_cam", sdp="v=0\r\n")
    assert code(await bob.request(nobody)) == "PARTICIPANT_NOT_FOUND"
    garbage = SubscriberAnswer(room_id=ROOM, sid="bob", track_sid="TR_cam", sdp="garbage")
    assert code(await bob.request(garbage)) == "BAD_REQUEST"
    candidate = MediaCandidate(
        room_id=ROOM, sid="bob", track_sid="TR_cam", target="subscriber", candidate="nonsense"
    )
    assert code(await bob.request(candidate)) == "BAD_REQUEST"
    relay = RelayStart(room_id=ROOM, track_sid="TR_none", to_forwarder="FW_other")
    assert code(await bob.request(relay)) == "TRACK_NOT_FOUND"
    bad_target = RelayStart(room_id=ROOM, track_sid="TR_cam", to_forwarder="FW other")
    assert code(await bob.request(bad_target)) == "BAD_REQUEST"
    await nc.publish(forwarder_sessions(FW), b"\x00garbage")  # no reply: counted, logged
    await nc.flush()

    await eventually(lambda: service.sessions_ignored >= 1, what="the bad state ignored")
    await bob.more_frames("TR_cam", 20)  # alice's video still reaches bob
    assert service.peer_connections == 2  # the refused offers left no connection
    end_of_candidates = MediaCandidate(
        room_id=ROOM, sid="alice", track_sid="TR_cam", target="publisher", candidate=""
    )
    assert isinstance(await alice.request(end_of_candidates), ForwarderOk)
    sdp = alice.publishers["TR_cam"].localDescription.sdp
    line = next(x for x in sdp.splitlines() if x.startswith("a=candidate:"))
    trickled = MediaCandidate(
        room_id=ROOM,
        sid="alice",
        track_sid="TR_cam",
        target="publisher",
        candidate=line[2:],
        sdp_mid="0",
    )
    assert isinstance(await alice.request(trickled), ForwarderOk)
    await bob.more_frames("TR_cam", 5)


async def test_announced_layers_are_taken_or_refused_with_named_errors(
    service: ForwarderService, clients: Callable[[str], Any]
) -> None:
    """A publisher's layer announcement (`set_track_layers`, relayed as `PublisherLayers`)
    is checked before anything changes; nonsense gets BAD_REQUEST naming what is wrong."""
    alice, _bob = await _alice_and_bob(clients)

    async def announce(track_sid: str, *specs: tuple[SimulcastRid, int, int, int]) -> Message:
        layers = tuple(
            PublishedLayer(rid=r, width=w, height=h, max_bitrate=b) for r, w, h, b in specs
        )
        return await alice.request(
            PublisherLayers(room_id=ROOM, sid="alice", track_sid=track_sid, layers=layers)
        )

    # aiortc sends one layer: taken (and of no use to a single-layer track)
    ok = await announce("TR_cam", ("h", 320, 180, 500_000), ("f", 640, 360, 1_500_000))
    assert isinstance(ok, ForwarderOk)
    refused: dict[str, tuple[tuple[SimulcastRid, int, int, int], ...]] = {
        "not a video size": (("f", 0, 360, 1_000_000),),
        "1..8192 pixels": (("f", 99_999, 360, 1_000_000),),
        "max_bitrate 5 ": (("f", 640, 360, 5),),
        "larger than a higher one": (("h", 640, 360, 500_000), ("f", 320, 180, 900_000)),
        "announced twice": (("f", 640, 360, 500_000), ("f", 640, 360, 500_000)),
    }
    for words, specs in refused.items():
        reply = await announce("TR_cam", *specs)
        assert isinstance(reply, Error) and reply.code == "BAD_REQUEST", reply
        assert words in reply.message, reply
    missing = await announce("TR_none", ("f", 640, 360, 1_000_000))
    assert isinstance(missing, Error) and missing.code == "TRACK_NOT_FOUND"
    # An offer's layers are checked before it is negotiated.
    pc = peer()
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    connections = service.peer_connections
    offer = PublishOffer(
        room_id=ROOM,
        sid="alice",
        track_sid="TR_cam2",
        kind="video",
        sdp=pc.localDescription.sdp,
        layers=(PublishedLayer(rid="q", width=160, height=0, max_bitrate=150_000),),
    )
    reply = await alice.request(offer)
    assert isinstance(reply, Error) and "layer q: 160x0" in reply.message, reply
    assert service.peer_connections == connections
    await _bob.more_frames("TR_cam", 10)  # forwarding never stopped
