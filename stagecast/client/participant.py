"""Remote participants as the client sees them, of either tier.

`RemoteParticipant` is one class for both tiers. Speakers live in `room.remote_participants`
and are kept in sync by the room; viewer-tier instances come only from `get_participants`
and are transient snapshots (the SDK keeps no per-viewer object). Tier-specific calls
(`subscribe` on a viewer) fail locally with `InvalidPermissions`,
and the server enforces the same rule.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Generic, Protocol, TypeVar

from schemas.client import SetVideoQuality, Subscribe, Unsubscribe
from schemas.codec import Message
from schemas.models import ParticipantInfo, ParticipantKind, TrackInfo, TrackKind, TrackSource
from stagecast.client.events import (
    Callback,
    EventEmitter,
    StreamEvent,
    Subscription,
    SubscriptionFailure,
)
from stagecast.client.media import MediaTransport
from stagecast.errors import BadRequest, InvalidPermissions, NotPublished

VIDEO_QUALITIES = ("low", "medium", "high")
LAYER_QUALITIES = {"q": "low", "h": "medium", "f": "high"}
"""The quality each simulcast layer (rid) is (`set_video_quality` names them so)."""

_KINDS = ("audio", "video")

P = TypeVar("P")


class RoomLink(Protocol):
    """What a participant object needs from its room."""

    callback_tasks: set[asyncio.Task[Any]]

    async def request(self, frame: Message) -> Message:
        """Send a request on the room's session and return its reply."""
        ...

    @property
    def media(self) -> MediaTransport | None:
        """The media transport, once there is one (see `stagecast.client.media`)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class GetParticipantsResult(Generic[P]):
    """One page of participants: speakers first, then viewers.

    `next_cursor` is None on the last page; `total` counts everyone matching the query at
    the snapshot the first page pinned.
    """

    participants: list[P]
    next_cursor: str | None
    total: int


@dataclasses.dataclass(slots=True)
class RemoteTrackPublication:
    """A track a remote speaker has published."""

    sid: str
    kind: TrackKind
    source: TrackSource
    name: str = ""
    muted: bool = False
    _link: RoomLink | None = dataclasses.field(default=None, repr=False, compare=False)
    video_layer: str | None = dataclasses.field(default=None, compare=False)
    """The simulcast layer the forwarder sends this client now (``"q"``, ``"h"`` or
    ``"f"``), as it reports at each switch; None while not subscribed, or for a track sent
    in one layer (`video-layer-changed` on the participant when it changes)."""

    @property
    def video_quality(self) -> str | None:
        """`video_layer` as a quality (``"low"``, ``"medium"``, ``"high"``): what arrives,
        which may be lower than what was asked for (the link, or the publisher, limits it)."""
        return LAYER_QUALITIES.get(self.video_layer or "")

    @classmethod
    def from_info(cls, track: TrackInfo, link: RoomLink | None = None) -> RemoteTrackPublication:
        return cls(track.sid, track.kind, track.source, track.name, track.muted, link)

    async def set_video_quality(self, quality: str) -> None:
        """Receive this video track at most at `quality`: ``"low"``, ``"medium"`` or
        ``"high"`` (the default).

        A speaker publishing from a browser sends its camera in three layers (quarter, half
        and full resolution); the forwarder then sends this subscriber the highest layer
        allowed by `quality` and by what its link carries, switching at a keyframe. A
        track sent in one layer (a screen share, a Python SDK publisher) is unaffected.
        Raises `BadRequest` for another quality or a non-video track, without a round trip.
        """
        if quality not in VIDEO_QUALITIES:
            raise BadRequest(f"video quality {quality!r}: expected low, medium or high")
        if self.kind != "video":
            raise BadRequest(f"track {self.sid} is {self.kind}: only video has qualities")
        if self._link is None:
            raise BadRequest(f"track {self.sid} belongs to no room")
        await self._link.request(
            SetVideoQuality(id=0, track_sid=self.sid, quality=quality)  # type: ignore[arg-type]
        )

    def event(self) -> StreamEvent:
        return StreamEvent(kind=self.kind, source=self.source, track_sid=self.sid)


class ParticipantView:
    """What every participant object shows of its identity (one class for both tiers)."""

    _info: ParticipantInfo
    _attributes: dict[str, str]
    _audio_level: float = 0.0

    def __repr__(self) -> str:
        tier = "viewer" if self.is_viewer else "speaker"
        return f"<{type(self).__name__} {self.id!r} sid={self.sid!r} {tier}>"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def sid(self) -> str:
        return self._info.sid

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def is_viewer(self) -> bool:
        return self._info.is_viewer

    @property
    def kind(self) -> ParticipantKind:
        return self._info.kind

    @property
    def metadata(self) -> str:
        return self._info.metadata

    @property
    def attributes(self) -> dict[str, str]:
        """The participant's attributes (a copy)."""
        return dict(self._attributes)

    @property
    def is_speaking(self) -> bool:
        """Whether the participant is among the room's active speakers now."""
        return self._audio_level > 0.0

    @property
    def audio_level(self) -> float:
        """The participant's smoothed audio level (0..1) while speaking, else 0."""
        return self._audio_level


class RemoteParticipant(ParticipantView):
    """Another participant in the room (a speaker, or a viewer from `get_participants`).

    Events (`on` / `off`): `stream-published` (`StreamEvent`; retroactive: a new listener
    gets one for each stream already published), `stream-unpublished` (`StreamEvent`),
    `track-muted` / `track-unmuted` (`RemoteTrackPublication`), `metadata-changed` (the new
    metadata), `attributes-changed` (the changed keys; a deleted key maps to ""),
    `stream-subscribed` / `stream-unsubscribed` (`Subscription`: the aiortc track), and
    `video-layer-changed` (`RemoteTrackPublication`: its `video_layer` changed).
    """

    EVENTS = (
        "stream-published",
        "stream-unpublished",
        "stream-subscribed",
        "stream-unsubscribed",
        "track-subscription-failed",
        "track-muted",
        "track-unmuted",
        "metadata-changed",
        "attributes-changed",
        "video-layer-changed",
    )

    def __init__(self, info: ParticipantInfo, link: RoomLink) -> None:
        self._info = info
        self._link = link
        self._attributes = dict(info.attributes)
        self._tracks = {t.sid: RemoteTrackPublication.from_info(t, link) for t in info.tracks}
        self._emitter = EventEmitter(self.EVENTS, link.callback_tasks)
        self._emitter.retroactive(
            "stream-published", lambda: [(p.event(),) for p in list(self._tracks.values())]
        )

    @property
    def joined_at(self) -> int:
        """When the session joined (ms since the epoch)."""
        return self._info.joined_at

    @property
    def tracks(self) -> dict[TrackKind, RemoteTrackPublication]:
        """Published tracks by kind (the latest published of each kind)."""
        by_kind: dict[TrackKind, RemoteTrackPublication] = {}
        for publication in self._tracks.values():
            by_kind[publication.kind] = publication
        return by_kind

    @property
    def track_publications(self) -> dict[str, RemoteTrackPublication]:
        """Published tracks by track sid (a copy)."""
        return dict(self._tracks)

    # ------------------------------------------------------------------ events

    def on(self, event: str, callback: Callback) -> Callback:
        """Listen to one of `EVENTS` (sync or async callback)."""
        return self._emitter.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        self._emitter.off(event, callback)

    # ------------------------------------------------------------------ media

    async def subscribe(self, kind: TrackKind) -> None:
        """Subscribe to this speaker's `kind` track.

        Raises `InvalidPermissions` for a viewer-tier participant and `NotPublished` when
        no track of that kind is published, both without a round trip; the server checks
        both again.
        """
        self._check_media(kind)
        if not any(p.kind == kind for p in self._tracks.values()):
            raise NotPublished(f"{self.id!r} has no {kind} track")
        await self._link.request(Subscribe(id=0, participant_id=self.id, kind=kind))
        media = self._link.media
        if media is not None:
            await media.subscribe(self.id, kind)

    async def unsubscribe(self, kind: TrackKind) -> None:
        """Stop receiving this speaker's `kind` track (`InvalidPermissions` for a viewer)."""
        self._check_media(kind)
        await self._link.request(Unsubscribe(id=0, participant_id=self.id, kind=kind))
        media = self._link.media
        if media is not None:
            await media.unsubscribe(self.id, kind)

    def _check_media(self, kind: str) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind: 'audio' or 'video', not {kind!r}")
        if self.is_viewer:
            raise InvalidPermissions(f"{self.id!r} is a viewer: viewers have no media")

    # ------------------------------------------------------------------ updates (the room)

    def _update(self, info: ParticipantInfo, *, tracks: bool = True) -> None:
        """Take a newer view of this participant; emit what changed."""
        old = self._info
        self._info = info
        if info.metadata != old.metadata:
            self._emitter.emit("metadata-changed", info.metadata)
        if info.attributes != self._attributes:
            changed = {k: v for k, v in info.attributes.items() if self._attributes.get(k) != v}
            changed |= {k: "" for k in self._attributes if k not in info.attributes}
            self._attributes = dict(info.attributes)
            self._emitter.emit("attributes-changed", changed)
        if tracks:
            current = {t.sid for t in info.tracks}
            for sid in [s for s in self._tracks if s not in current]:
                self._track_unpublished(sid)
            for track in info.tracks:
                if track.sid not in self._tracks:
                    self._track_published(track)
                else:
                    self._track_muted(track.sid, track.muted)

    def _track_published(self, track: TrackInfo) -> None:
        if track.sid in self._tracks:
            return
        publication = self._tracks[track.sid] = RemoteTrackPublication.from_info(track, self._link)
        self._emitter.emit("stream-published", publication.event())

    def _track_unpublished(self, track_sid: str) -> None:
        publication = self._tracks.pop(track_sid, None)
        if publication is not None:
            self._emitter.emit("stream-unpublished", publication.event())

    def _media_event(self, event: str, subscription: Subscription) -> None:
        if event == "stream-unsubscribed":
            self._video_layer(subscription.track_sid, None)  # nothing arrives any more
        self._emitter.emit(event, subscription)

    def _subscription_failed(self, failure: SubscriptionFailure) -> None:
        self._emitter.emit("track-subscription-failed", failure)

    def _video_layer(self, track_sid: str, rid: str | None) -> None:
        """The forwarder now sends layer `rid` of `track_sid` (None: nothing)."""
        publication = self._tracks.get(track_sid)
        if publication is not None and publication.video_layer != rid:
            publication.video_layer = rid
            self._emitter.emit("video-layer-changed", publication)

    def _track_muted(self, track_sid: str, muted: bool) -> None:
        publication = self._tracks.get(track_sid)
        if publication is not None and publication.muted != muted:
            publication.muted = muted
            self._emitter.emit("track-muted" if muted else "track-unmuted", publication)
