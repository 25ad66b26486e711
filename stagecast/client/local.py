"""This client's own participant: its identity, tier, grant, and the actions it takes.

A viewer-tier participant cannot publish (`InvalidPermissions`, raised locally; the server
enforces the same). Publishing announces a track; media does not flow yet (see
`stagecast.client.media`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from schemas.client import (
    Ack,
    LowerHand,
    MuteTrack,
    PublishData,
    PublishTrack,
    RaiseHand,
    SetAttributes,
    SetMetadata,
    UnpublishTrack,
)
from schemas.models import (
    HAND_ATTRIBUTE,
    HAND_RAISED,
    Grant,
    ParticipantInfo,
    TrackKind,
    TrackSource,
)
from stagecast.client.participant import ParticipantView, RoomLink
from stagecast.client.rpc import RpcEndpoint, RpcHandler
from stagecast.client.streams import (
    ByteStreamWriter,
    StreamInfo,
    TextStreamWriter,
    new_info,
    open_writer,
)
from stagecast.errors import InvalidPermissions, InvalidStateError, NotPublished

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

_DEFAULT_SOURCE: dict[str, TrackSource] = {"audio": "microphone", "video": "camera"}


def _kind_of(track: object) -> TrackKind:
    kind = track if isinstance(track, str) else getattr(track, "kind", "")
    if kind == "audio":
        return "audio"
    if kind == "video":
        return "video"
    raise ValueError(f"a track of kind 'audio' or 'video', not {kind!r}")


def _track_name(track: object) -> str:
    """The name a track is announced with: its aiortc id (none for a bare kind)."""
    if track is None or isinstance(track, str):
        return ""
    return str(getattr(track, "id", ""))[:256]


@dataclasses.dataclass(eq=False, slots=True)
class LocalTrackPublication:
    """A track this client announced with `publish` (`mute` / `unmute` it here)."""

    sid: str
    kind: TrackKind
    source: TrackSource
    track: Any = dataclasses.field(repr=False)
    muted: bool = False
    _participant: LocalParticipant | None = dataclasses.field(default=None, repr=False)

    async def mute(self) -> None:
        """Mute the track for everyone (`track-muted` on other clients)."""
        await self._set_muted(True)

    async def unmute(self) -> None:
        await self._set_muted(False)

    async def _set_muted(self, muted: bool) -> None:
        if self._participant is None:
            raise NotPublished(f"track {self.sid!r} is no longer published")
        await self._participant._link.request(MuteTrack(id=0, track_sid=self.sid, muted=muted))
        self.muted = muted


class LocalParticipant(ParticipantView):
    """This client's participant: its identity, tier, grant, tracks and actions."""

    def __init__(
        self, info: ParticipantInfo, grant: Grant, link: RoomLink, rpc: RpcEndpoint | None = None
    ) -> None:
        self._info = info
        self._rpc = rpc
        self._grant = grant
        self._link = link
        self._attributes = dict(info.attributes)
        self._publications: dict[str, LocalTrackPublication] = {}

    @property
    def grant(self) -> Grant:
        return self._grant

    @property
    def publications(self) -> dict[str, LocalTrackPublication]:
        """Announced tracks by sid (a copy)."""
        return dict(self._publications)

    @property
    def tracks(self) -> dict[TrackKind, LocalTrackPublication]:
        """Announced tracks by kind (the latest of each kind)."""
        return {p.kind: p for p in self._publications.values()}

    async def publish(
        self, track: MediaStreamTrack | TrackKind, source: TrackSource | None = None
    ) -> LocalTrackPublication:
        """Publish an aiortc `MediaStreamTrack` (or announce a bare kind, media-less).

        `source` defaults to `camera` for video and `microphone` for audio. A viewer gets
        `InvalidPermissions` without a round trip. Media frames do not flow yet: this
        announces the track (`stream-published` everywhere); see `stagecast.client.media`.
        """
        kind = _kind_of(track)
        if self.is_viewer:
            raise InvalidPermissions("viewers cannot publish: they have no media")
        if not self._grant.can_publish:
            raise InvalidPermissions("the grant does not allow publishing")
        chosen: TrackSource = source or _DEFAULT_SOURCE[kind]
        reply = await self._link.request(
            PublishTrack(id=0, kind=kind, source=chosen, name=_track_name(track))
        )
        sid = reply.sid if isinstance(reply, Ack) and reply.sid else ""
        publication = LocalTrackPublication(
            sid=sid,
            kind=kind,
            source=chosen,
            track=None if isinstance(track, str) else track,
            _participant=self,
        )
        self._publications[sid] = publication
        media = self._link.media
        if media is not None and publication.track is not None:
            await media.publish(sid, publication.track)
        return publication

    async def unpublish(self, kind_or_publication: TrackKind | LocalTrackPublication) -> None:
        """Unpublish one publication, or every published track of a kind.

        `NotPublished` when nothing matches.
        """
        if isinstance(kind_or_publication, LocalTrackPublication):
            targets = [kind_or_publication]
            if kind_or_publication.sid not in self._publications:
                raise NotPublished(f"track {kind_or_publication.sid!r} is not published")
        else:
            targets = [p for p in self._publications.values() if p.kind == kind_or_publication]
            if not targets:
                raise NotPublished(f"no {kind_or_publication} track is published")
        for publication in targets:
            await self._link.request(UnpublishTrack(id=0, track_sid=publication.sid))
            self._forget(publication.sid)
            media = self._link.media
            if media is not None:
                await media.unpublish(publication.sid)

    async def set_metadata(self, metadata: str) -> None:
        """Replace this participant's metadata (everyone sees `metadata-changed`)."""
        await self._link.request(SetMetadata(id=0, metadata=metadata))
        self._info = msgspec.structs.replace(self._info, metadata=metadata)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        """Merge `attributes` into this participant's; an empty value deletes its key."""
        await self._link.request(SetAttributes(id=0, attributes=dict(attributes)))
        self._merge(attributes)

    async def publish_data(
        self,
        payload: bytes,
        reliable: bool = True,
        topic: str | None = None,
        destination_ids: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        """Send `payload` (at most 15 KiB) to the room, or only to `destination_ids`."""
        frame = PublishData(
            id=0,
            payload=bytes(payload),
            reliable=reliable,
            topic=topic,
            destination_ids=tuple(destination_ids or ()),
        )
        await self._link.request(frame)

    # ------------------------------------------------------------------ streams

    async def stream_text(
        self,
        *,
        topic: str = "",
        destination_ids: Sequence[str] | None = None,
        attributes: dict[str, str] | None = None,
        total_size: int | None = None,
        stream_id: str | None = None,
    ) -> TextStreamWriter:
        """Open a text stream on `topic` (to everyone, or `destination_ids` only): `await
        writer.write(text)` as text is produced, then `await writer.aclose()`."""
        info = new_info(
            "text",
            topic,
            self.id,
            mime_type="text/plain",
            total_size=total_size,
            attributes=attributes,
            stream_id=stream_id,
        )
        writer = await open_writer("text", info, self._link.request, destination_ids or ())
        assert isinstance(writer, TextStreamWriter)
        return writer

    async def send_text(
        self,
        text: str,
        *,
        topic: str = "",
        destination_ids: Sequence[str] | None = None,
        attributes: dict[str, str] | None = None,
    ) -> StreamInfo:
        """Send `text` (any length) as one text stream on `topic`; its info once sent."""
        size = len(text.encode())
        writer = await self.stream_text(
            topic=topic, destination_ids=destination_ids, attributes=attributes, total_size=size
        )
        async with writer:
            await writer.write(text)
        return writer.info

    async def stream_bytes(
        self,
        name: str = "",
        *,
        topic: str = "",
        mime_type: str = "application/octet-stream",
        total_size: int | None = None,
        destination_ids: Sequence[str] | None = None,
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
    ) -> ByteStreamWriter:
        """Open a byte stream (a file called `name`) on `topic`: `await writer.write(data)`,
        then `await writer.aclose()`."""
        info = new_info(
            "bytes",
            topic,
            self.id,
            mime_type=mime_type,
            total_size=total_size,
            attributes=attributes,
            name=name,
            stream_id=stream_id,
        )
        writer = await open_writer("bytes", info, self._link.request, destination_ids or ())
        assert isinstance(writer, ByteStreamWriter)
        return writer

    async def send_file(
        self,
        file: str | os.PathLike[str] | bytes,
        *,
        topic: str = "",
        mime_type: str = "application/octet-stream",
        name: str | None = None,
        destination_ids: Sequence[str] | None = None,
        attributes: dict[str, str] | None = None,
    ) -> StreamInfo:
        """Send a file (a path, read in chunks, or bytes) as one byte stream on `topic`."""
        source = None
        if isinstance(file, bytes):
            size, label = len(file), name or ""
        else:
            path = Path(file)
            source = await asyncio.to_thread(path.open, "rb")
            size = (await asyncio.to_thread(os.fstat, source.fileno())).st_size
            label = name if name is not None else path.name
        try:
            writer = await self.stream_bytes(
                label,
                topic=topic,
                mime_type=mime_type,
                total_size=size,
                destination_ids=destination_ids,
                attributes=attributes,
            )
            async with writer:
                if source is None:
                    assert isinstance(file, bytes)
                    await writer.write(file)
                else:
                    while piece := await asyncio.to_thread(source.read, 256 * 1024):
                        await writer.write(piece)
        finally:
            if source is not None:
                source.close()
        return writer.info

    # ------------------------------------------------------------------ RPC

    def register_rpc_method(
        self, method: str, handler: RpcHandler | None = None
    ) -> Callable[[RpcHandler], RpcHandler]:
        """Serve `method`: `register_rpc_method("name", handler)`, or as a decorator
        `@local.register_rpc_method("name")`. The handler gets `RpcInvocationData` and
        returns the response payload (str, at most 14 KiB); what it raises reaches the
        caller as `RpcError` 1500 (or as the `RpcError` it raised)."""
        rpc = self._rpc_endpoint()

        def register(fn: RpcHandler) -> RpcHandler:
            rpc.register(method, fn)
            return fn

        if handler is not None:
            register(handler)
        return register

    def unregister_rpc_method(self, method: str) -> None:
        self._rpc_endpoint().unregister(method)

    async def perform_rpc(
        self,
        *,
        destination_id: str,
        method: str,
        payload: str = "",
        response_timeout: float = 10.0,
    ) -> str:
        """Call `method` on participant `destination_id`; its response payload.

        Raises `RpcError` with LiveKit's code (see `stagecast.client.rpc`); never hangs past
        `response_timeout` seconds.
        """
        return await self._rpc_endpoint().perform(destination_id, method, payload, response_timeout)

    def _rpc_endpoint(self) -> RpcEndpoint:
        if self._rpc is None:
            raise InvalidStateError("this participant has no room to serve RPC in")
        return self._rpc

    async def raise_hand(self) -> None:
        """Set the attribute `hand` = `raised` (moderators get `hand-raised`)."""
        await self._link.request(RaiseHand(id=0))
        self._merge({HAND_ATTRIBUTE: HAND_RAISED})

    async def lower_hand(self) -> None:
        """Clear the attribute `hand` (moderators get `hand-lowered`)."""
        await self._link.request(LowerHand(id=0))
        self._merge({HAND_ATTRIBUTE: ""})

    # ------------------------------------------------------------------ updates (the room)

    def _merge(self, attributes: dict[str, str]) -> None:
        for key, value in attributes.items():
            if value:
                self._attributes[key] = value
            else:
                self._attributes.pop(key, None)

    def _apply(self, info: ParticipantInfo, grant: Grant | None = None) -> bool:
        """Take the server's view of this participant; True when tier or grant changed."""
        changed = info.is_viewer != self._info.is_viewer or (
            grant is not None and grant != self._grant
        )
        self._info = info
        self._attributes = dict(info.attributes)
        if grant is not None:
            self._grant = grant
        if info.is_viewer:
            for sid in list(self._publications):
                self._forget(sid)  # a demoted participant's tracks leave with it
        else:
            for track in info.tracks:
                publication = self._publications.get(track.sid)
                if publication is not None:
                    publication.muted = track.muted
        return changed

    async def _republish(self) -> None:
        """After a full reconnect (a new session): announce every track again, under a new
        sid, with its mute state, and send its media. Each publication object keeps its
        identity for the application; only its `sid` changes."""
        old, self._publications = self._publications, {}
        for publication in old.values():
            reply = await self._link.request(
                PublishTrack(
                    id=0,
                    kind=publication.kind,
                    source=publication.source,
                    name=_track_name(publication.track),
                )
            )
            publication.sid = reply.sid if isinstance(reply, Ack) and reply.sid else ""
            publication._participant = self
            self._publications[publication.sid] = publication
            if publication.muted:
                await self._link.request(MuteTrack(id=0, track_sid=publication.sid, muted=True))
            media = self._link.media
            if media is not None and publication.track is not None:
                await media.publish(publication.sid, publication.track)

    def _track_muted(self, track_sid: str, muted: bool) -> None:
        publication = self._publications.get(track_sid)
        if publication is not None:
            publication.muted = muted

    def _forget(self, track_sid: str) -> None:
        publication = self._publications.pop(track_sid, None)
        if publication is not None:
            publication._participant = None
