"""An agent that needs no model: a live "who spoke when" log, as a text stream.

It subscribes to every speaker's audio (audio only), decodes it, measures each 20 ms frame's
level and writes a line on topic `transcription` whenever someone starts or stops talking:

    3.2s  alice  started speaking
    5.9s  alice  stopped speaking

Run it as a worker (agent name `transcriber`), then ask for it in a room:

    stagecast agent-worker --module examples.speaker_log:entrypoint --agent-name transcriber \
        --no-auto-subscribe
    # from a backend: await api.create_room("demo", agents=["transcriber"])

The demo page shows the log it writes. Detection is by level only (-40 dBFS to start, 0.6 s
below it to stop), like the active-speaker indicator, so it hears noise as speech.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import time

from aiortc.mediastreams import MediaStreamError

from stagecast.agents import JobContext, Worker
from stagecast.client import RemoteParticipant, StreamEvent, TextStreamWriter
from stagecast.client.events import Subscription

TOPIC = "transcription"
START_DBFS = -40.0
"""A frame at least this loud (RMS, dB below full scale) starts a turn."""
HANGOVER = 0.6
"""Seconds under the threshold that end a turn (pauses between words do not)."""


def level_dbfs(pcm: bytes) -> float:
    """The RMS level of signed 16-bit PCM, in dBFS (-inf for silence)."""
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if not samples:
        return -math.inf
    power = sum(s * s for s in samples) / len(samples)
    return -math.inf if power == 0 else 10 * math.log10(power / 32768**2)


class SpeakerLog:
    """Follows each speaker's decoded audio and writes turn changes to `writer`."""

    def __init__(self, writer: TextStreamWriter) -> None:
        self.writer = writer
        self.started = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    def follow(self, participant: RemoteParticipant) -> None:
        """Subscribe to `participant`'s audio (when it publishes some) and listen."""

        async def published(event: StreamEvent) -> None:
            if event.kind == "audio":
                await participant.subscribe("audio")

        participant.on("stream-published", published)
        participant.on("stream-subscribed", self._subscribed)

    def _subscribed(self, subscription: Subscription) -> None:
        if subscription.kind == "audio":
            self._tasks.append(asyncio.create_task(self._listen(subscription)))

    async def _listen(self, subscription: Subscription) -> None:
        speaking, last_loud = False, 0.0
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await subscription.track.recv()
                now = time.monotonic()
                if level_dbfs(bytes(frame.planes[0])) >= START_DBFS:
                    last_loud = now
                    if not speaking:
                        speaking = True
                        await self._line(now, subscription.participant_id, "started speaking")
                elif speaking and now - last_loud >= HANGOVER:
                    speaking = False
                    await self._line(now, subscription.participant_id, "stopped speaking")

    async def _line(self, now: float, participant_id: str, what: str) -> None:
        await self.writer.write(f"{now - self.started:6.1f}s  {participant_id}  {what}\n")

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def entrypoint(ctx: JobContext) -> None:
    """The job: follow every speaker until the room ends or removes the agent."""
    writer = await ctx.room.local_participant.stream_text(topic=TOPIC)
    assert isinstance(writer, TextStreamWriter)
    log = SpeakerLog(writer)
    ctx.room.on("participant-joined", log.follow)  # retroactive: present speakers too
    try:
        await ctx.wait_for_disconnect()
    finally:
        await log.aclose()
        with contextlib.suppress(Exception):
            await writer.aclose()


def worker(url: str, api_key: str, api_secret: str, nats_url: str) -> Worker:
    """This agent as a worker (`auto_subscribe=False`: it picks audio itself)."""
    return Worker(
        url,
        api_key,
        api_secret,
        agent_name="transcriber",
        entrypoint=entrypoint,
        nats_url=nats_url,
        auto_subscribe=False,
    )
