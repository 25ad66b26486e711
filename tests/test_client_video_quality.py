"""`RemoteTrackPublication.set_video_quality`: bad input is refused without a round trip."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from schemas.client import SetVideoQuality
from schemas.codec import Message
from stagecast.client.participant import RemoteTrackPublication
from stagecast.errors import BadRequest


@dataclass
class Link:
    sent: list[Message] = field(default_factory=list)

    async def request(self, frame: Message) -> Message:
        self.sent.append(frame)
        return frame


async def test_a_quality_request_goes_to_the_server() -> None:
    link = Link()
    publication = RemoteTrackPublication("TR_cam", "video", "camera", _link=link)  # type: ignore[arg-type]
    await publication.set_video_quality("medium")
    assert link.sent == [SetVideoQuality(id=0, track_sid="TR_cam", quality="medium")]


@pytest.mark.parametrize(
    ("kind", "quality", "linked"),
    [("video", "ultra", True), ("audio", "low", True), ("video", "low", False)],
)
async def test_bad_requests_are_named(kind: str, quality: str, linked: bool) -> None:
    link = Link()
    publication = RemoteTrackPublication(
        "TR_x",
        kind,  # type: ignore[arg-type]
        "camera",
        _link=link if linked else None,  # type: ignore[arg-type]
    )
    with pytest.raises(BadRequest):
        await publication.set_video_quality(quality)
    assert link.sent == []
