"""Active speakers end to end: aiortc publishers through the forwarder, to every client.

Two SDK publishers send Opus with the RFC 6464 audio level (aiortc computes it from each
frame): alice a tone, bob silence. The forwarder reads the levels without decoding, the
edge merges and coalesces the report, and every client, a viewer included, learns that
alice (and only alice) is talking; when her tone stops, she stops being listed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc.mediastreams import AudioStreamTrack

from stagecast.client import Room
from tests.polling import eventually
from tests.stack_fixtures import AUDIENCE, WAIT, Stack, sdk_stack
from tests.tones import ToneTrack

ROOM = "speakers-room"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, forwarders=1) as running:
        yield running


class Speakers:
    """Every `active-speakers-changed` a room emitted, as lists of participant ids."""

    def __init__(self, room: Room) -> None:
        self.seen: list[list[str]] = []
        room.on("active-speakers-changed", lambda ps: self.seen.append([p.id for p in ps]))

    def latest(self) -> list[str] | None:
        return self.seen[-1] if self.seen else None


async def test_only_the_talker_is_reported_and_a_viewer_hears_it(stack: Stack) -> None:
    alice = await stack.join(stack.token("alice", ROOM))
    bob = await stack.join(stack.token("bob", ROOM))
    viewer = await stack.join(stack.token("viewer-1", ROOM, viewer=True, grant=AUDIENCE))
    heard = {name: Speakers(room) for name, room in (("bob", bob), ("viewer", viewer))}
    tone = ToneTrack()
    await alice.local_participant.publish(tone)
    await bob.local_participant.publish(AudioStreamTrack())  # silence: level -127 dBov

    for name, speakers in heard.items():
        await eventually(
            lambda s=speakers: s.latest() == ["alice"],  # type: ignore[misc]
            what=f"{name} told alice talks",
            timeout=WAIT,
        )
    assert all("bob" not in ids for s in heard.values() for ids in s.seen)
    assert [p.id for p in viewer.active_speakers] == ["alice"]
    talker = bob.remote_participants["alice"]
    assert talker.is_speaking and 0 < talker.audio_level <= 1
    voices = stack.forwarders["FW_0"].voices
    assert voices.reports >= 1

    tone.loud = False  # alice falls silent: the room is told nobody talks
    for name, speakers in heard.items():
        await eventually(
            lambda s=speakers: s.latest() == [],  # type: ignore[misc]
            what=f"{name} told alice stopped",
            timeout=WAIT,
        )
    assert not talker.is_speaking
