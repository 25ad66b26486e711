"""Media comes back after the forwarder carrying a publisher is SIGKILLed.

A private nats-server, statekeeper and edge (`sdk_stack`), one forwarder as a child process
(the one killed, `kill -9`: no `stopping` heartbeat, no connection closed politely) and two
in this process, and SDK clients with real aiortc peer connections. The publisher and one
subscriber are placed on the doomed forwarder (it is the only one at first); another
subscriber is on a second forwarder and receives the track through a relay from the doomed
one; a room of bystanders lives on the two survivors. After the kill the statekeeper moves
the doomed forwarder's sessions (`FORWARDER_TIMEOUT_MS`), the publisher's SDK hears
`media_moved` and offers its track again under the same sid, and both subscribers decode
frames again, with no track unpublished or published again in anyone's view.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import nats
from aiortc import RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack

from forwarder.service import ForwarderService
from roomlog.roles import Role
from stagecast.client import Room
from stagecast.client.media import PeerMedia
from tests.heartbeats import watch_heartbeats
from tests.stack_fixtures import Events, Stack, forwarder_process, sdk_stack
from tests.test_media import Watcher

DOOMED = "FW_doomed"
RECOVERY_S = 25.0
"""Bound on kill -> frames again: 3 s to notice the silence, then signaling, ICE, DTLS and
a keyframe on a loaded 2-core machine (the chaos bench measures the real figure)."""


class Flaps:
    """Publication events a room saw about remote participants (a failover adds none)."""

    def __init__(self, room: Room) -> None:
        self.events: list[tuple[str, str]] = []
        self.left = Events(room, "participant-left")
        for participant in room.remote_participants.values():
            for name in ("stream-published", "stream-unpublished"):
                participant.on(name, lambda ev, _n=name: self.events.append((_n, ev.track_sid)))
        self.events.clear()  # `stream-published` replays the current ones to a new listener


def connections(room: Room) -> list[RTCPeerConnection]:
    media = room.media
    assert isinstance(media, PeerMedia)
    return media.peer_connections


def published_on(stack: Stack, forwarder_id: str) -> list[str]:
    service: ForwarderService = stack.forwarders[forwarder_id]
    return service.published_tracks


def sessions_on(stack: Stack, forwarder_id: str) -> set[str]:
    return {sid for _room, sid in stack.forwarders[forwarder_id].sessions}


async def test_media_comes_back_after_the_publishers_forwarder_is_killed(tmp_path: Path) -> None:
    async with sdk_stack(tmp_path) as stack:
        admin = await nats.connect(stack.nats_url(Role.ADMIN))
        beats = await watch_heartbeats(admin)
        try:
            async with forwarder_process(stack, beats, DOOMED, tmp_path / "doomed.log") as doomed:
                await _fail_over(stack, doomed)
        finally:
            await admin.close()


async def _fail_over(stack: Stack, doomed: asyncio.subprocess.Process) -> None:
    # alice publishes and carol subscribes on the doomed forwarder, the only one yet
    alice = await stack.join(stack.token("alice", "stage"))
    publication = await alice.local_participant.publish(VideoStreamTrack())
    carol = await stack.join(stack.token("carol", "stage"))
    carol_sees = Watcher(carol)
    await carol_sees.more_frames("alice", "video")
    # bob, on FW_1 (idle, so least loaded), gets alice's track relayed from the doomed one
    await stack.start_forwarder("FW_1")
    bob = await stack.join(stack.token("bob", "stage"))
    bob_sees = Watcher(bob)
    await bob_sees.more_frames("alice", "video")
    assert sessions_on(stack, "FW_1") == {bob.local_participant.sid}
    assert stack.forwarders["FW_1"].relays_in[publication.sid].origin_id == DOOMED
    # bystanders in another room, on the survivors (FW_2 is idle, then FW_1 ties it)
    await stack.start_forwarder("FW_2")
    dave = await stack.join(stack.token("dave", "lobby"))
    await dave.local_participant.publish(VideoStreamTrack())
    erin = await stack.join(stack.token("erin", "lobby"))
    erin_sees = Watcher(erin)
    await erin_sees.more_frames("dave", "video")
    bystanders = {dave.local_participant.sid, erin.local_participant.sid}
    assert bystanders <= sessions_on(stack, "FW_1") | sessions_on(stack, "FW_2")
    lobby_connections = [connections(r) for r in (dave, erin)]
    erin_subscription = erin_sees.subscriptions[("dave", "video")]
    flaps = {name: Flaps(room) for name, room in [("bob", bob), ("carol", carol), ("erin", erin)]}
    (alice_pc,) = connections(alice)

    os.kill(doomed.pid, signal.SIGKILL)
    await asyncio.wait_for(doomed.wait(), 10)
    await carol_sees.more_frames("alice", "video", n=30, timeout=RECOVERY_S)
    await bob_sees.more_frames("alice", "video", n=30, timeout=RECOVERY_S)

    # alice's track was offered again under its sid on a new connection, on a survivor
    (moved_pc,) = connections(alice)
    assert moved_pc is not alice_pc
    assert [p.sid for p in alice.local_participant.publications.values()] == [publication.sid]
    (carrier,) = [f for f in ("FW_1", "FW_2") if publication.sid in published_on(stack, f)]
    # bob stayed on FW_1; its relay of alice's track follows her (or goes: she is local)
    assert bob.local_participant.sid in sessions_on(stack, "FW_1")
    relayed = stack.forwarders["FW_1"].relays_in.get(publication.sid)
    if carrier == "FW_2":
        assert relayed is not None and relayed.origin_id == "FW_2" and relayed.active
    else:
        assert relayed is None
    # nobody saw a track unpublished or published again, or anyone leave
    for name, seen in flaps.items():
        assert seen.events == [] and seen.left.of("participant-left") == [], (name, seen.events)
    # the other room was left alone: the same connections, the same subscription, flowing
    assert [connections(r) for r in (dave, erin)] == lobby_connections
    assert erin_sees.subscriptions[("dave", "video")] is erin_subscription
    await erin_sees.more_frames("dave", "video")
    for watcher in (carol_sees, bob_sees, erin_sees):
        await watcher.close()
