"""`RemoteTrackPublication.set_video_quality`: bad input is refused without a round trip;
`video_layer` follows the forwarder's `video_layer` frames (end to end with a real forwarder
and a Chromium publisher: tests/test_browser.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from schemas.client import JoinAccepted, SetVideoQuality, VideoLayer
from schemas.codec import Message
from schemas.models import Grant, ParticipantInfo, RoomInfo, TrackInfo
from stagecast.client import Room
from stagecast.client.events import Subscription
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


def room_with_a_camera() -> Room:
    room = Room("ws://edge.test:7880", "token", auto_subscribe=False)
    camera = TrackInfo(sid="TR_cam", kind="video", source="camera")
    alice = ParticipantInfo(sid="PA_alice", id="alice", tracks=(camera,))
    room.apply_joined(
        JoinAccepted(
            id=1,
            seq=10,
            room=RoomInfo(id="r1", sid="RM_1"),
            participant=ParticipantInfo(sid="PA_me", id="me"),
            grant=Grant(),
            speakers=(alice,),
        )
    )
    return room


def test_the_layer_the_forwarder_reports_is_the_publications_with_an_event() -> None:
    room = room_with_a_camera()
    alice = room.remote_participants["alice"]
    publication = alice.tracks["video"]
    seen: list[str | None] = []
    alice.on("video-layer-changed", lambda p: seen.append(p.video_layer))
    assert (publication.video_layer, publication.video_quality) == (None, None)
    room.handle_frame(VideoLayer(track_sid="TR_cam", rid="f"))
    room.handle_frame(VideoLayer(track_sid="TR_cam", rid="f"))  # no change: no event
    room.handle_frame(VideoLayer(track_sid="TR_other", rid="q"))  # nobody's: ignored
    assert (publication.video_layer, publication.video_quality) == ("f", "high")
    room.handle_frame(VideoLayer(track_sid="TR_cam", rid="q"))
    assert (publication.video_layer, publication.video_quality) == ("q", "low")
    room.media_unsubscribed(Subscription("alice", "video", "TR_cam", track=None))
    assert publication.video_layer is None  # nothing arrives any more
    assert seen == ["f", "q", None]
