"""WHIP ingest: how long an encoder waits for its answer, and until its video is seen.

`stagecast bench whip --sessions 20` starts a private nats-server, a statekeeper process,
an edge and a forwarder (in this process) and an SDK subscriber in the room, then runs
`--sessions` WHIP sessions one after another: an aiortc peer connection with VP8 and Opus
test tracks POSTs its offer to ``/whip``, applies the answer, and is ended with DELETE
once the subscriber decoded its first video frame. Figures (medians; p90 in the note):

- post_to_201_ms: POST sent -> 201 received: the join, one announcement per track, the
  placement and the forwarder's answer (its ICE gathering included).
- post_to_first_frame_ms: POST sent -> the subscriber decoded the session's first video
  frame (ICE, DTLS, the subscription's own connection, a keyframe).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

import stagecast
from edge.config import EdgeConfig
from edge.main import running_edge
from forwarder.main import running_forwarder
from stagecast.bench import Result, median, percentile
from stagecast.bench.harness import private_nats, start_statekeeper, stop_child, wait_applied
from stagecast.client.events import Subscription

API_KEY, API_SECRET = "bench", "bench-secret"
ROOM = "whip-bench"
LIMIT_S = 30.0
"""Seconds one session may take to show its first frame."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=20, help="WHIP sessions, one by one")


class FirstFrames:
    """When the subscriber decoded the first video frame of each participant."""

    def __init__(self, room: stagecast.Room) -> None:
        self.at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        room.on("participant-joined", self._joined)

    def _joined(self, participant: stagecast.RemoteParticipant) -> None:
        participant.on("stream-subscribed", self._subscribed)

    def _subscribed(self, sub: Subscription) -> None:
        if sub.kind == "video":
            task = asyncio.create_task(self._first(sub))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _first(self, sub: Subscription) -> None:
        with contextlib.suppress(MediaStreamError):
            await sub.track.recv()
            self.at.setdefault(sub.participant_id, time.perf_counter())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _session(http: httpx.AsyncClient, frames: FirstFrames, n: int) -> tuple[float, float]:
    identity = f"encoder-{n}"
    token = stagecast.generate_token(API_KEY, API_SECRET, room_id=ROOM, participant_id=identity)
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        started = time.perf_counter()
        response = await http.post(
            "/whip",
            content=pc.localDescription.sdp,
            headers={"authorization": f"Bearer {token}", "content-type": "application/sdp"},
        )
        answered = time.perf_counter()
        if response.status_code != 201:
            raise RuntimeError(f"POST /whip: {response.status_code} {response.text}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        while identity not in frames.at:
            if time.perf_counter() - started > LIMIT_S:
                raise RuntimeError(f"{identity}: no frame within {LIMIT_S:.0f} s")
            await asyncio.sleep(0.005)
        await http.delete(response.headers["location"])
        return (answered - started) * 1000, (frames.at[identity] - started) * 1000
    finally:
        await pc.close()


async def run(args: argparse.Namespace) -> list[Result]:
    async with private_nats() as (server, nc, workdir):
        database = f"sqlite+aiosqlite:///{Path(workdir) / 'statekeeper.db'}"
        keeper = start_statekeeper(server.url, database, Path(workdir) / "statekeeper.log")
        try:
            await wait_applied(nc, 0, limit_s=60)
            async with (
                running_forwarder(server.url, forwarder_id="FW_bench"),
                running_edge(_edge_config(server.url)) as url,
                httpx.AsyncClient(base_url=url, timeout=LIMIT_S) as http,
            ):
                token = stagecast.generate_token(
                    API_KEY, API_SECRET, room_id=ROOM, participant_id="watcher"
                )
                room = await stagecast.client.join(url, token)
                frames = FirstFrames(room)
                answers: list[float] = []
                firsts: list[float] = []
                try:
                    for n in range(args.sessions):
                        answer_ms, first_ms = await _session(http, frames, n)
                        answers.append(answer_ms)
                        firsts.append(first_ms)
                finally:
                    await frames.close()
                    await room.leave()
        finally:
            await stop_child(keeper)
    return [
        Result("post_to_201_ms", median(answers), "ms", f"p90 {percentile(answers, 90):.0f} ms"),
        Result(
            "post_to_first_frame_ms", median(firsts), "ms", f"p90 {percentile(firsts, 90):.0f} ms"
        ),
    ]


def _edge_config(nats_url: str) -> EdgeConfig:
    return EdgeConfig(nats_url=nats_url, api_key=API_KEY, api_secret=API_SECRET, port=0)
