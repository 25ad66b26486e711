"""A WHIP session has no socket: its edge's heartbeat keeps it, its edge's end ends it.

The statekeeper judges edges by their heartbeats. An ingress session must stay while its
edge beats (however long it stays quiet itself), leave after the room's departure grace
when its edge goes silent, and leave at once when its edge stops cleanly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from edge.config import EdgeConfig
from edge.main import running_edge
from tests.fault_fixtures import Partition
from tests.polling import eventually
from tests.stack_fixtures import API_KEY, API_SECRET, WAIT, sdk_stack
from tests.test_media import Watcher
from tests.whip_client import whip_publish

ROOM = "whip-live"


async def test_an_ingress_stays_while_its_edge_beats_and_leaves_when_it_goes_silent(
    tmp_path: Path,
) -> None:
    async with sdk_stack(tmp_path, forwarders=1) as stack:
        await stack.api.create_room(ROOM, departure_timeout=2)
        observer = await stack.join(stack.token("observer", ROOM))
        seen = Watcher(observer)
        partition = Partition(stack.nats.port)
        await partition.heal()
        config = EdgeConfig(nats_url=partition.url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        steady = doomed = None
        try:
            async with running_edge(config) as cut_url:
                steady = await whip_publish(stack.url, stack.token("steady", ROOM))
                doomed = await whip_publish(cut_url, stack.token("doomed", ROOM))
                await seen.more_frames("steady", "video")
                await seen.more_frames("doomed", "video")
                await asyncio.sleep(6.0)  # past the statekeeper's 4 s edge timeout
                assert sorted(observer.remote_participants) == ["doomed", "steady"]
                await partition.cut()
                await eventually(
                    lambda: "doomed" not in observer.remote_participants,
                    what="the silent edge's ingress leaves",
                    timeout=30,
                )
                assert "steady" in observer.remote_participants
                await seen.more_frames("steady", "video")
                await partition.heal()
                # back on NATS, the edge learns that its session is gone and forgets it
                async with httpx.AsyncClient(base_url=cut_url) as http:

                    async def forgotten() -> bool:
                        response = await http.delete(doomed.location)
                        return response.status_code == 404

                    await eventually(forgotten, what="the edge forgets the session", timeout=30)
        finally:
            await seen.close()
            for publisher in (steady, doomed):
                if publisher is not None:
                    await publisher.close()
            await partition.cut()


async def test_a_stopping_edge_takes_its_ingress_out_at_once(tmp_path: Path) -> None:
    async with sdk_stack(tmp_path, forwarders=1) as stack:
        await stack.api.create_room(ROOM, departure_timeout=300)  # the grace would not do
        observer = await stack.join(stack.token("observer", ROOM))
        async with stack.edge() as other_url:
            studio = await whip_publish(other_url, stack.token("studio", ROOM))
            await eventually(
                lambda: "studio" in observer.remote_participants, what="the studio joins"
            )
        try:
            await eventually(
                lambda: "studio" not in observer.remote_participants,
                what="the studio leaves with its edge",
                timeout=WAIT,
            )
            await eventually(
                lambda: stack.forwarders["FW_0"].published_tracks == [],
                what="its tracks unpublished",
                timeout=WAIT,
            )
        finally:
            await studio.close()


async def test_an_ingress_leaves_when_its_forwarder_dies(tmp_path: Path) -> None:
    async with sdk_stack(tmp_path, forwarders=2) as stack:
        observer = await stack.join(stack.token("observer", ROOM))
        studio = await whip_publish(stack.url, stack.token("studio", ROOM))
        try:
            await eventually(
                lambda: "studio" in observer.remote_participants, what="the studio joins"
            )
            [holder] = [s for s in stack.forwarders.values() if s.published_tracks]
            await holder.nc.close()  # silent from now on: no heartbeat, no IngressEnded
            await eventually(
                lambda: "studio" not in observer.remote_participants,
                what="the studio leaves once its media is placed elsewhere",
                timeout=30,
            )
        finally:
            await studio.close()
