"""A room spanning forwarders: a track published on one is relayed to another over NATS.

The first test runs two real forwarder processes (`stagecast forwarder`) against the
test's nats-server; the others run two services in this process, so their relay state
can be inspected, with the relay timings shortened.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from forwarder.main import running_forwarder
from forwarder.relay_in import RelayInState
from processes.children import spawn_child, stop_child
from schemas.codec import decode
from schemas.media import ForwarderSdp, MediaTrackState, RelayPacket
from schemas.subjects import relay
from tests.heartbeats import Heartbeats
from tests.polling import eventually, settled
from tests.test_forwarder_service import WAIT, Client, subscribed

FW_A, FW_B = "FW_A", "FW_B"
FORWARDER_CLI = (sys.executable, "-m", "stagecast.cli", "forwarder")


class RelayTap:
    """Counts the relayed packets of one track to one forwarder (NATS fans them out)."""

    def __init__(self) -> None:
        self.packets = 0
        self.sequence_numbers: list[int] = []

    async def on_packet(self, msg: Msg) -> None:
        packet = decode(msg.data)
        assert isinstance(packet, RelayPacket)
        self.packets += 1
        self.sequence_numbers.append(packet.sequence_number)


async def tap(nc: NATS, to_forwarder: str, track_sid: str) -> RelayTap:
    counter = RelayTap()
    await nc.subscribe(relay(to_forwarder, track_sid), cb=counter.on_packet)
    await nc.flush()
    return counter


@pytest.fixture
async def clients(nc: NATS) -> AsyncIterator[Callable[..., Any]]:
    made: list[Client] = []

    async def make(sid: str, forwarder_id: str) -> Client:
        client = await Client(nc, sid, forwarder_id).start()
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


async def _publish_camera(alice: Client) -> None:
    await alice.desire(tracks=[MediaTrackState(track_sid="TR_cam", kind="video")])
    assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)


# --------------------------------------------------------------------------- processes


async def test_a_room_spanning_two_forwarder_processes(
    nats_url: str, nc: NATS, tmp_path: Path, heartbeats: Heartbeats, clients: Callable[..., Any]
) -> None:
    children = [
        spawn_child(
            [*FORWARDER_CLI, "--nats-url", nats_url, "--id", forwarder_id, "--heartbeat", "0.2"],
            env=dict(os.environ),
            log_path=tmp_path / f"{forwarder_id}.log",
        )
        for forwarder_id in (FW_A, FW_B)
    ]
    try:
        await eventually(
            lambda: all(heartbeats.last(f) for f in (FW_A, FW_B)), what="A and B up", timeout=WAIT
        )
        alice = await clients("alice", FW_A)
        bob = await clients("bob", FW_B)
        await alice.desire(
            tracks=[
                MediaTrackState(track_sid="TR_cam", kind="video"),
                MediaTrackState(track_sid="TR_mic", kind="audio"),
            ]
        )
        assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)
        assert isinstance(await alice.publish("TR_mic", "audio"), ForwarderSdp)
        video, audio = await tap(nc, FW_B, "TR_cam"), await tap(nc, FW_B, "TR_mic")

        # bob is on B and subscribes to alice's tracks, which are on A
        await bob.desire(
            subscriptions=[
                subscribed("TR_cam", "video", alice, forwarder_id=FW_A),
                subscribed("TR_mic", "audio", alice, forwarder_id=FW_A),
            ]
        )
        await eventually(
            bob.decoded("TR_cam", "TR_mic", at_least=10), what="bob decoding via B", timeout=WAIT
        )
        assert video.packets > 0 and audio.packets > 0

        def load(forwarder_id: str) -> tuple[int, int, int] | None:
            beat = heartbeats.last(forwarder_id)
            return (
                None if beat is None else (beat.peer_connections, beat.published_tracks, beat.legs)
            )

        # A: alice's two connections, two relay legs; B: bob's two connections and legs
        await eventually(lambda: load(FW_A) == (2, 2, 2), what="A's load", timeout=WAIT)
        await eventually(lambda: load(FW_B) == (2, 0, 2), what="B's load", timeout=WAIT)

        # bob unsubscribes: B closes the legs and stops the relays, A goes quiet
        await bob.desire(subscriptions=[])
        await eventually(lambda: load(FW_B) == (0, 0, 0), what="B idle", timeout=WAIT)
        await eventually(lambda: load(FW_A) == (2, 2, 0), what="A relays nothing", timeout=WAIT)
        quiet_video = await settled(lambda: video.packets, what="the video relay", quiet=1.0)
        quiet_audio = await settled(lambda: audio.packets, what="the audio relay", quiet=0.2)
        await asyncio.sleep(0.5)
        assert (video.packets, audio.packets) == (quiet_video, quiet_audio)
    finally:
        for child in children:
            await stop_child(child, timeout=15)
    assert [child.returncode for child in children] == [0, 0]
    for forwarder_id in (FW_A, FW_B):
        last = heartbeats.last(forwarder_id)
        assert last is not None and last.stopping, f"{forwarder_id} said nothing on stopping"


# --------------------------------------------------------------------------- in process


@contextlib.asynccontextmanager
async def two_forwarders(nats_url: str, **origin: Any) -> AsyncIterator[tuple[Any, Any]]:
    async with (
        running_forwarder(nats_url, forwarder_id=FW_A, heartbeat_interval=0.2, **origin) as a,
        running_forwarder(
            nats_url, forwarder_id=FW_B, heartbeat_interval=0.2, relay_refresh=0.5
        ) as b,
    ):
        yield a, b


async def test_a_subscription_before_the_publication_relays_once_it_comes(
    nats_url: str, clients: Callable[..., Any]
) -> None:
    async with two_forwarders(nats_url) as (a, b):
        alice = await clients("alice", FW_A)
        bob = await clients("bob", FW_B)
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id=FW_A)])
        await eventually(
            lambda: b.relays_in["TR_cam"].start_attempts >= 3, what="B retrying the relay"
        )
        assert b.relays_in["TR_cam"].state is RelayInState.STARTING and bob.offers == []

        await _publish_camera(alice)
        await eventually(bob.decoded("TR_cam", at_least=10), what="bob decoding", timeout=WAIT)
        assert a.relays_out == [("TR_cam", FW_B)] and b.relays_in["TR_cam"].active

        # a mute at the origin leaves no hole in the relay: B's leg resumes at once
        router_b = b.forwarder.router
        await alice.desire(tracks=[MediaTrackState(track_sid="TR_cam", kind="video", muted=True)])
        await settled(lambda: router_b.stats("TR_cam").packets_received, what="relay while muted")
        await alice.desire(tracks=[MediaTrackState(track_sid="TR_cam", kind="video")])
        await bob.more_frames("TR_cam", 20)
        assert router_b.stats("TR_cam").packets_repeated == 0

        # alice's connection is replaced (ICE restart): the relay and bob's leg carry on
        assert isinstance(await alice.publish("TR_cam", "video", ice_restart=True), ForwarderSdp)
        await bob.more_frames("TR_cam", 20)
        assert a.relays_out == [("TR_cam", FW_B)] and len(bob.offers) == 1

        # the publisher goes: A drops the relay leg, B keeps waiting for a new publication
        await alice.desire(tracks=[])
        await eventually(lambda: a.relays_out == [], what="A's relay leg dropped")
        await eventually(lambda: a.peer_connections == 0, what="alice's connection closed")


async def test_an_expired_relay_resumes_its_sequence(
    nats_url: str, nc: NATS, clients: Callable[..., Any]
) -> None:
    # A drops a relay not renewed within 0.3 s; B renews every 0.5 s: the relay keeps being
    # dropped and re-established, each time continuing the sequence it left off at.
    async with two_forwarders(nats_url, relay_lease=0.3) as (a, b):
        alice = await clients("alice", FW_A)
        bob = await clients("bob", FW_B)
        await _publish_camera(alice)
        counter = await tap(nc, FW_B, "TR_cam")
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id=FW_A)])
        await eventually(bob.decoded("TR_cam", at_least=5), what="bob decoding", timeout=WAIT)
        drops = 0

        def dropped_and_back() -> bool:
            nonlocal drops
            if not a.relays_out:
                drops += 1
            return drops >= 2 and bool(a.relays_out)

        await eventually(dropped_and_back, what="the relay dropped and renewed", timeout=WAIT)
        await bob.more_frames("TR_cam", 10)
        steps = [
            (later - earlier + 0x8000) % 0x10000 - 0x8000  # signed 16-bit difference
            for earlier, later in itertools.pairwise(counter.sequence_numbers)
        ]
        assert steps and max(steps) < 10, f"the relay's sequence jumped by {max(steps)}"
        assert b.relays_in["TR_cam"].active


async def test_a_relay_that_never_starts_is_given_up(
    nats_url: str, clients: Callable[..., Any]
) -> None:
    async with running_forwarder(nats_url, forwarder_id=FW_B, relay_give_up=0.5) as b:
        alice = await clients("alice", FW_A)  # FW_A does not exist: no responders
        bob = await clients("bob", FW_B)
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id=FW_A)])
        await eventually(lambda: "TR_cam" in b.relays_in, what="the relay starting")
        relay_in = b.relays_in["TR_cam"]
        await eventually(lambda: "TR_cam" not in b.relays_in, what="the relay given up", timeout=5)
        assert relay_in.state is RelayInState.FAILED and relay_in.start_attempts >= 2
        assert bob.offers == [] and b.peer_connections == 0
        # a new state asks again
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id=FW_A)])
        await eventually(lambda: "TR_cam" in b.relays_in, what="the relay starting again")


@pytest.mark.parametrize("offer_first", [False, True], ids=["state_first", "offer_first"])
async def test_a_publisher_moving_onto_the_forwarder_relaying_it_replaces_the_relay(
    nats_url: str, clients: Callable[..., Any], offer_first: bool
) -> None:
    # What a forwarder failure does when the publisher's session is placed again on the
    # forwarder of its subscribers: that forwarder relays the track in, and must let the
    # publisher's new connection publish it there instead (in either order of its new
    # desired state and the publisher's offer).
    async with two_forwarders(nats_url) as (_a, b):
        alice = await clients("alice", FW_A)
        bob = await clients("bob", FW_B)
        await _publish_camera(alice)
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id=FW_A)])
        await eventually(bob.decoded("TR_cam", at_least=5), what="bob via the relay", timeout=WAIT)
        assert b.relays_in["TR_cam"].origin_id == FW_A

        alice.forwarder_id = FW_B  # the statekeeper placed her on B
        if offer_first:
            assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)
        await alice.desire(tracks=[MediaTrackState(track_sid="TR_cam", kind="video")])
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id=FW_B)])
        if not offer_first:
            await eventually(lambda: "TR_cam" not in b.relays_in, what="the relay gone")
            assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)
        await bob.more_frames("TR_cam", 20)
        assert b.published_tracks == ["TR_cam"] and "TR_cam" not in b.relays_in
        assert len(bob.offers) == 2  # his leg was served again, from alice's connection on B


async def test_a_relay_follows_its_publisher_to_another_forwarder(
    nats_url: str, clients: Callable[..., Any]
) -> None:
    # A forwarder failure where the publisher lands on a third forwarder: the subscriber's
    # forwarder (B) must relay the track from there (C) instead of the old origin (A).
    async with (
        two_forwarders(nats_url) as (_a, b),
        running_forwarder(nats_url, forwarder_id="FW_C", heartbeat_interval=0.2) as c,
    ):
        alice = await clients("alice", FW_A)
        bob = await clients("bob", FW_B)
        await _publish_camera(alice)
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id=FW_A)])
        await eventually(bob.decoded("TR_cam", at_least=5), what="bob via A", timeout=WAIT)

        alice.forwarder_id = "FW_C"  # the statekeeper placed her on C
        await alice.desire(tracks=[MediaTrackState(track_sid="TR_cam", kind="video")])
        await bob.desire(subscriptions=[subscribed("TR_cam", "video", alice, forwarder_id="FW_C")])
        assert isinstance(await alice.publish("TR_cam", "video"), ForwarderSdp)
        await bob.more_frames("TR_cam", 20)
        relayed = b.relays_in["TR_cam"]
        assert relayed.origin_id == "FW_C" and relayed.active
        assert c.relays_out == [("TR_cam", FW_B)] and len(bob.offers) == 2
