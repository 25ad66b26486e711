"""The seed's multi-agent room, end to end: a human's microphone reaches a transcription
agent (audio only, it answers with a text stream) and an assistant agent (it answers with
audio the human decodes). Real nats-server, statekeeper, edge, forwarder and aiortc peers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc.mediastreams import MediaStreamError

from examples.speaker_log import entrypoint as speaker_log
from examples.speaker_log import level_dbfs
from roomlog.roles import Role
from stagecast.agents import JobContext, Worker
from stagecast.client import RemoteParticipant, TextStreamReader
from stagecast.client.events import Subscription
from tests.polling import eventually
from tests.stack_fixtures import API_KEY, API_SECRET, OPTIONS, Stack, sdk_stack
from tests.tones import ToneTrack

pytestmark = pytest.mark.timeout(60)

ROOM = "support"
WAIT = 30.0


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, forwarders=1) as running:
        yield running


def agent_worker(stack: Stack, name: str, entrypoint: object, **options: object) -> Worker:
    return Worker(
        stack.url,
        API_KEY,
        API_SECRET,
        agent_name=name,
        entrypoint=entrypoint,  # type: ignore[arg-type]
        nats_url=stack.nats_url(Role.AGENT),
        beat_interval=0.2,
        options=OPTIONS,
        **options,  # type: ignore[arg-type]
    )


async def assistant(ctx: JobContext) -> None:
    """Answers with a voice once it has heard a loud human."""
    heard = asyncio.Event()

    async def listen(subscription: Subscription) -> None:
        loud = 0
        with contextlib.suppress(MediaStreamError):
            while loud < 5:
                frame = await subscription.track.recv()
                loud += level_dbfs(bytes(frame.planes[0])) > -40
        heard.set()

    tasks: list[asyncio.Task[None]] = []

    def subscribed(subscription: Subscription) -> None:
        if subscription.kind == "audio":
            tasks.append(asyncio.create_task(listen(subscription)))

    def follow(participant: RemoteParticipant) -> None:
        if participant.id == "human":
            participant.on("stream-subscribed", subscribed)

    ctx.room.on("participant-joined", follow)
    await heard.wait()
    await ctx.room.local_participant.publish(ToneTrack())
    await ctx.wait_for_disconnect()


async def test_a_human_a_transcriber_and_an_assistant(stack: Stack) -> None:
    transcript: list[str] = []
    transcript_from: list[str] = []
    answered: asyncio.Future[Subscription] = asyncio.get_running_loop().create_future()

    async def on_transcript(reader: TextStreamReader, sender_id: str) -> None:
        transcript_from.append(sender_id)
        async for text in reader:
            transcript.append(text)

    def on_subscribed(subscription: Subscription) -> None:
        if subscription.kind == "audio" and not answered.done():
            answered.set_result(subscription)

    human = await stack.join(stack.token("human", ROOM))
    human.register_text_stream_handler("transcription", on_transcript)
    human.on("participant-joined", lambda p: p.on("stream-subscribed", on_subscribed))
    async with (
        agent_worker(stack, "transcriber", speaker_log, auto_subscribe=False),
        agent_worker(stack, "assistant", assistant),
    ):
        await stack.api.create_room(ROOM, agents=["transcriber", "assistant"])
        await human.local_participant.publish(ToneTrack())

        # the assistant heard the human and answers with audio the human decodes
        voice = await asyncio.wait_for(answered, WAIT)
        frames = [await asyncio.wait_for(voice.track.recv(), WAIT) for _ in range(10)]
        assert any(level_dbfs(bytes(f.planes[0])) > -40 for f in frames)
        jobs = {j.agent_name: j for j in await stack.api.list_dispatches(ROOM)}
        assert voice.participant_id == f"agent-{jobs['assistant'].id}"

        # the transcriber wrote who spoke, and publishes nothing
        await eventually(
            lambda: "human  started speaking" in "".join(transcript),
            what="the transcript to name the human",
            timeout=WAIT,
        )
        transcriber_id = f"agent-{jobs['transcriber'].id}"
        assert transcript_from == [transcriber_id]
        transcriber = human.remote_participants[transcriber_id]
        assert transcriber.kind == "agent" and not transcriber.track_publications
