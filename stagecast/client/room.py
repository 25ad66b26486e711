"""`Room`: one client session in a room, and the speaker roster it keeps in sync.

The room applies the `joined` snapshot, then every pushed frame in arrival order: speaker
frames keep `remote_participants` (speakers only, keyed by participant id) current, counts
frames become `participant-count-changed`, and so on. Broadcast frames carry the room-log
sequence they derive from; a frame older than the last applied one of its stream (after a
statekeeper restart frames may be re-sent) is dropped. The session's lifecycle (joining,
resuming after a dropped socket, leaving) lives in `stagecast.client.session`.

Over 500 lines: `Room` is the SDK's public surface (LiveKit's names), and its frame
handlers keep one roster; streams, RPC and media live in their own modules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from schemas.client import (
    ActiveSpeakersChanged,
    AudienceChanged,
    CountsChanged,
    DataReceived,
    GetParticipants,
    HandChanged,
    JoinAccepted,
    MediaMoved,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantsPage,
    ParticipantUpdated,
    RoomUpdated,
    SignalAnswer,
    SignalCandidate,
    SignalOffer,
    TierChanged,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
    VideoLayer,
    ViewerUpdated,
)
from schemas.codec import Message, decode
from schemas.errors import SchemaError
from schemas.models import Counts, ParticipantInfo, RoomInfo, Tier
from schemas.streams import RPC_TOPIC, STREAM_TOPIC
from stagecast.client.connection import ConnectOptions
from stagecast.client.events import (
    Callback,
    ConnectionState,
    DataMessage,
    EventEmitter,
    ParticipantCounts,
    StreamEvent,
    Subscription,
    SubscriptionFailure,
)
from stagecast.client.local import LocalParticipant
from stagecast.client.media import MediaTransport, PeerMedia
from stagecast.client.participant import GetParticipantsResult, ParticipantView, RemoteParticipant
from stagecast.client.rpc import RpcEndpoint
from stagecast.client.session import ClientSession
from stagecast.client.streams import (
    ByteStreamHandler,
    StreamInbox,
    TextStreamHandler,
)
from stagecast.errors import InvalidStateError, StagecastError

log = logging.getLogger("stagecast.client")

ROOM_EVENTS = (
    "participant-joined",
    "participant-left",
    "participant-count-changed",
    "active-speakers-changed",
    "room-metadata-changed",
    "data-received",
    "tier-changed",
    "hand-raised",
    "hand-lowered",
    "audience-changed",
    "disconnected",
    "reconnecting",
    "reconnected",
)

_STREAM_OF: dict[type[Message], str] = {
    ParticipantJoined: "speakers",
    ParticipantLeft: "speakers",
    ParticipantUpdated: "speakers",
    TrackPublished: "speakers",
    TrackUnpublished: "speakers",
    TrackMuted: "speakers",
    RoomUpdated: "speakers",
    CountsChanged: "counts",
    HandChanged: "mod",
    ViewerUpdated: "mod",
    AudienceChanged: "mod",
    TierChanged: "self",
}
"""Which sequence stream a broadcast frame belongs to (each is ordered on its own)."""


def _counts(counts: Counts) -> ParticipantCounts:
    return ParticipantCounts(speaker=counts.speaker, viewer=counts.viewer, total=counts.total)


class Room:
    """A joined room (make one with `stagecast.join`).

    Events (`on` / `off`, sync or async callbacks): `participant-joined` (RemoteParticipant;
    retroactive: a new listener gets one for each speaker already present),
    `participant-left`, `participant-count-changed` (`ParticipantCounts`),
    `active-speakers-changed` (the speaking participants, loudest first; at most four a
    second, viewers included),
    `room-metadata-changed` (the new metadata), `data-received` (`DataMessage`),
    `tier-changed` (the `LocalParticipant`, after a promotion, demotion or grant change),
    `hand-raised` / `hand-lowered` (RemoteParticipant; moderators only; `hand-raised` is
    retroactive: a new listener gets one per hand up, those raised before this client
    joined included), `audience-changed` (`ParticipantCounts`; moderators
    only: someone joined, left or changed tier, so a `get_participants` page may be stale;
    at most four a second), `disconnected`
    (the reason code), `reconnecting`, `reconnected`.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        *,
        room_id: str | None = None,
        name: str | None = None,
        auto_subscribe: bool = True,
        options: ConnectOptions | None = None,
    ) -> None:
        self.callback_tasks: set[asyncio.Task[Any]] = set()
        self._emitter = EventEmitter(ROOM_EVENTS, self.callback_tasks)
        self._emitter.retroactive(
            "participant-joined", lambda: [(p,) for p in list(self._remote.values())]
        )
        self._remote: dict[str, RemoteParticipant] = {}
        self._hands: dict[str, RemoteParticipant] = {}
        """Hands up (moderators only), by participant id: `hand-raised` is retroactive."""
        self._emitter.retroactive("hand-raised", lambda: [(p,) for p in self._hands.values()])
        self._info = RoomInfo(id=room_id or "", sid="")
        self._local: LocalParticipant | None = None
        self._counts = ParticipantCounts(0, 0, 0)
        self._active_speakers: list[ParticipantView] = []
        self._last_seq: dict[str, int] = {}
        self._auto_subscribe = auto_subscribe
        self._media: PeerMedia = PeerMedia(self)
        self._streams = StreamInbox(self.callback_tasks)
        self._rpc = RpcEndpoint(self.request, self._remote.__contains__, self.callback_tasks)
        self._session = ClientSession(
            self,
            url,
            token,
            room_id=room_id,
            name=name,
            auto_subscribe=auto_subscribe,
            options=options or ConnectOptions(),
        )

    def __repr__(self) -> str:
        return f"<Room {self.id!r} sid={self.sid!r} {self.connection_state.value}>"

    async def __aenter__(self) -> Room:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    # ------------------------------------------------------------------ public surface

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def sid(self) -> str:
        return self._info.sid

    @property
    def metadata(self) -> str:
        return self._info.metadata

    @property
    def info(self) -> RoomInfo:
        """The room as of the join (or the last `room_updated`)."""
        return self._info

    @property
    def local_participant(self) -> LocalParticipant:
        if self._local is None:
            raise InvalidStateError("the room has not been joined")
        return self._local

    @property
    def connection_state(self) -> ConnectionState:
        return self._session.state

    @property
    def remote_participants(self) -> dict[str, RemoteParticipant]:
        """The speakers in the room other than this client, by participant id."""
        return self._remote

    @property
    def counts(self) -> ParticipantCounts:
        """The latest counts by tier (as of the join or the last count update)."""
        return self._counts

    @property
    def active_speakers(self) -> list[ParticipantView]:
        """Who is talking now, loudest first (as of the last `active-speakers-changed`)."""
        return list(self._active_speakers)

    @property
    def media(self) -> MediaTransport | None:
        """The media transport: aiortc connections to the forwarder (`PeerMedia`)."""
        return self._media

    def media_subscribed(self, subscription: Subscription) -> None:
        """The transport received a subscribed track: tell its participant's listeners."""
        participant = self._remote.get(subscription.participant_id)
        if participant is not None:
            participant._media_event("stream-subscribed", subscription)

    def media_unsubscribed(self, subscription: Subscription) -> None:
        participant = self._remote.get(subscription.participant_id)
        if participant is not None:
            participant._media_event("stream-unsubscribed", subscription)

    def media_subscription_failed(self, failure: SubscriptionFailure) -> None:
        """A subscribed track cannot be received: tell its participant's listeners."""
        log.warning("subscribing to %s failed: %s", failure.track_sid, failure.message)
        participant = self._remote.get(failure.participant_id)
        if participant is not None:
            participant._subscription_failed(failure)

    def register_text_stream_handler(self, topic: str, handler: TextStreamHandler) -> None:
        """Call `handler(reader, sender_id)` for each text stream on `topic`.

        `reader` is a `TextStreamReader` (`async for text in reader`, `await
        reader.read_all()`, `reader.info`). One handler per topic (`ValueError` otherwise).
        """
        self._streams.register("text", topic, handler)

    def unregister_text_stream_handler(self, topic: str) -> None:
        self._streams.unregister("text", topic)

    def register_byte_stream_handler(self, topic: str, handler: ByteStreamHandler) -> None:
        """Call `handler(reader, sender_id)` for each byte stream on `topic`
        (`ByteStreamReader`; see `register_text_stream_handler`)."""
        self._streams.register("bytes", topic, handler)

    def unregister_byte_stream_handler(self, topic: str) -> None:
        self._streams.unregister("bytes", topic)

    def on(self, event: str, callback: Callback) -> Callback:
        """Listen to a room event (see the class docstring); returns the callback."""
        return self._emitter.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        self._emitter.off(event, callback)

    async def get_participants(
        self, tier: Tier | None = None, limit: int = 50, cursor: str | None = None
    ) -> GetParticipantsResult[RemoteParticipant]:
        """One page of the room's participants: speakers first, then viewers.

        Pass `next_cursor` back to get the next page; walking every page yields exactly the
        participants present when the first page was read. Speakers in the page are the
        objects of `remote_participants`; viewers are transient `RemoteParticipant`s.
        """
        if tier not in (None, "speaker", "viewer"):
            raise ValueError(f"tier: 'speaker', 'viewer' or None, not {tier!r}")
        reply = await self.request(GetParticipants(id=0, tier=tier, limit=limit, cursor=cursor))
        if not isinstance(reply, ParticipantsPage):
            raise InvalidStateError(f"unexpected reply {reply.TYPE}")
        return GetParticipantsResult(
            participants=[self._participant_for(info) for info in reply.participants],
            next_cursor=reply.next_cursor,
            total=reply.total,
        )

    async def leave(self) -> None:
        """Leave the room now (no departure grace). Idempotent."""
        await self._session.leave()

    async def request(self, frame: Message) -> Message:
        """Send a request frame on the session (its `id` is assigned) and return the reply."""
        return await self._session.request(frame)

    # ------------------------------------------------------------------ snapshot

    def apply_joined(self, joined: JoinAccepted) -> None:
        """Take a `joined` snapshot: the first, or a resumed session's (emitting the diff)."""
        first = self._local is None
        resumed = not first
        if resumed and joined.room.metadata != self._info.metadata:
            self._info = joined.room
            self._emitter.emit("room-metadata-changed", joined.room.metadata)
        self._info = joined.room
        if self._local is None:
            self._local = LocalParticipant(joined.participant, joined.grant, self, self._rpc)
        elif self._local._apply(joined.participant, joined.grant):
            self._emitter.emit("tier-changed", self._local)
        self._last_seq = dict.fromkeys(("speakers", "counts", "mod", "self"), joined.seq)
        present = {p.id: p for p in joined.speakers if p.id != joined.participant.id}
        for participant_id in [i for i in self._remote if i not in present]:
            self._drop(participant_id)
        for info in present.values():
            self._upsert(info, announce=resumed)
        counts = _counts(joined.counts)
        if resumed and counts != self._counts:
            self._counts = counts
            self._emitter.emit("participant-count-changed", counts)
        self._counts = counts

    # ------------------------------------------------------------------ frames

    def handle_frame(self, frame: Message) -> None:
        """Apply one pushed frame (the session calls this in arrival order)."""
        stream = _STREAM_OF.get(type(frame))
        if stream is not None:
            seq: int = getattr(frame, "seq", 0)
            if seq < self._last_seq.get(stream, 0):
                log.debug("dropping stale %s (seq %d)", frame.TYPE, seq)
                return
            self._last_seq[stream] = seq
        handler = _HANDLERS.get(type(frame))
        if handler is not None:
            handler(self, frame)
        elif isinstance(frame, (SignalOffer, SignalAnswer, SignalCandidate, MediaMoved)):
            self._media.on_signal(frame)

    def _is_local(self, participant_id: str) -> bool:
        return self._local is not None and participant_id == self._local.id

    def _on_participant_joined(self, frame: ParticipantJoined) -> None:
        if self._is_local(frame.participant.id):
            return  # our own join (or promotion) as the room sees it
        if not frame.participant.is_viewer:
            self._upsert(frame.participant, announce=True)

    def _on_participant_left(self, frame: ParticipantLeft) -> None:
        self._hands.pop(frame.participant_id, None)
        current = self._remote.get(frame.participant_id)
        if current is not None and current.sid == frame.sid:
            self._drop(frame.participant_id)

    def _on_participant_updated(self, frame: ParticipantUpdated) -> None:
        info = frame.participant
        if self._is_local(info.id):
            assert self._local is not None
            self._local._apply(info)
        elif not info.is_viewer:
            self._upsert(info, announce=True)

    def _on_track_published(self, frame: TrackPublished) -> None:
        participant = self._remote.get(frame.participant_id)
        if participant is not None:
            participant._track_published(frame.track)
            self._session.tracks_available(participant)

    def _on_track_unpublished(self, frame: TrackUnpublished) -> None:
        participant = self._remote.get(frame.participant_id)
        if participant is not None:
            participant._track_unpublished(frame.track_sid)
            self._media.track_unpublished(frame.track_sid)
        elif self._is_local(frame.participant_id):
            assert self._local is not None
            self._local._forget(frame.track_sid)
            self._media.stop_sending(frame.track_sid)

    def _on_track_muted(self, frame: TrackMuted) -> None:
        participant = self._remote.get(frame.participant_id)
        if participant is not None:
            participant._track_muted(frame.track_sid, frame.muted)
        elif self._is_local(frame.participant_id):
            assert self._local is not None
            self._local._track_muted(frame.track_sid, frame.muted)

    def _on_video_layer(self, frame: VideoLayer) -> None:
        for participant in self._remote.values():
            if frame.track_sid in participant._tracks:
                participant._video_layer(frame.track_sid, frame.rid)
                return

    def _on_room_updated(self, frame: RoomUpdated) -> None:
        changed = frame.room.metadata != self._info.metadata
        self._info = frame.room
        if changed:
            self._emitter.emit("room-metadata-changed", frame.room.metadata)

    def _on_counts(self, frame: CountsChanged) -> None:
        counts = _counts(frame.counts)
        if counts != self._counts:
            self._counts = counts
            self._emitter.emit("participant-count-changed", counts)

    def _on_active_speakers(self, frame: ActiveSpeakersChanged) -> None:
        for former in self._active_speakers:
            former._audio_level = 0.0
        speakers: list[ParticipantView] = []
        for speaker in frame.speakers:
            participant: ParticipantView | None = self._remote.get(speaker.participant_id)
            if participant is None and self._is_local(speaker.participant_id):
                participant = self._local
            if participant is None:
                continue  # not known here yet: listed at the next change
            participant._audio_level = max(speaker.level, 1e-6)
            speakers.append(participant)
        self._active_speakers = speakers
        self._emitter.emit("active-speakers-changed", list(speakers))

    def _on_hand(self, frame: HandChanged) -> None:
        participant = self._participant_for(frame.participant)
        if frame.raised:
            self._hands[participant.id] = participant
        else:
            self._hands.pop(participant.id, None)
        self._emitter.emit("hand-raised" if frame.raised else "hand-lowered", participant)

    def _on_audience(self, frame: AudienceChanged) -> None:
        self._emitter.emit("audience-changed", _counts(frame.counts))

    def _on_data(self, frame: DataReceived) -> None:
        if frame.topic in (STREAM_TOPIC, RPC_TOPIC):
            if frame.sender_id is None:
                return  # streams and RPC come from participants only
            try:
                inner = decode(frame.payload)
            except SchemaError as exc:
                log.info("bad %s message from %r: %s", frame.topic, frame.sender_id, exc)
                return
            if frame.topic == STREAM_TOPIC:
                self._streams.on_message(frame.sender_id, inner)
            else:
                self._rpc.on_message(frame.sender_id, inner)
            return
        message = DataMessage(
            payload=frame.payload,
            sender_id=frame.sender_id,
            topic=frame.topic,
            reliable=frame.reliable,
        )
        self._emitter.emit("data-received", message)

    def _on_tier_changed(self, frame: TierChanged) -> None:
        local = self.local_participant
        if frame.resume_token:
            self._session.resume_token = frame.resume_token
        local._apply(frame.participant, frame.grant)
        if local.is_viewer:
            self._media.stop_sending()  # a demoted speaker's tracks are unpublished
        self._emitter.emit("tier-changed", local)

    # ------------------------------------------------------------------ roster

    def _upsert(self, info: ParticipantInfo, *, announce: bool) -> None:
        """Add a speaker, or update the one present (a new sid: it left and rejoined)."""
        current = self._remote.get(info.id)
        if current is not None and current.sid == info.sid:
            current._update(info)
            self._session.tracks_available(current)
            return
        if current is not None:
            self._drop(info.id)
        participant = self._remote[info.id] = RemoteParticipant(info, self)
        if self._auto_subscribe:
            participant.on("stream-published", self._auto_subscriber(participant))
        if announce:
            self._emitter.emit("participant-joined", participant)
        self._session.tracks_available(participant)

    def _auto_subscriber(
        self, participant: RemoteParticipant
    ) -> Callable[[StreamEvent], Awaitable[None]]:
        """A `stream-published` listener that subscribes (auto_subscribe=True)."""

        async def subscribe(event: StreamEvent) -> None:
            local = self._local
            if local is None or not local.grant.can_subscribe:
                return
            if self._remote.get(participant.id) is not participant:
                return  # it left (or rejoined as a new session) meanwhile
            try:
                await participant.subscribe(event.kind)
            except StagecastError as exc:  # e.g. unpublished meanwhile: nothing to receive
                log.info("auto-subscribe to %s %s: %s", participant.id, event.kind, exc)

        return subscribe

    def _drop(self, participant_id: str) -> None:
        participant = self._remote.pop(participant_id, None)
        self._streams.sender_left(participant_id)
        self._rpc.participant_left(participant_id)
        if participant is not None:
            for track_sid in participant.track_publications:
                self._media.track_unpublished(track_sid)
            self._emitter.emit("participant-left", participant)

    def _participant_for(self, info: ParticipantInfo) -> RemoteParticipant:
        """The tracked speaker object for `info`, or a transient one (viewers, self)."""
        current = self._remote.get(info.id)
        if current is not None and current.sid == info.sid:
            return current
        return RemoteParticipant(info, self)

    # ------------------------------------------------------------------ session hooks

    def emit(self, event: str, *args: Any) -> None:
        """Emit a room event (the session uses this for lifecycle events)."""
        if event == "disconnected":
            why = f"this client left the room ({args[0] if args else 'disconnected'})"
            self._streams.close(why)
            self._rpc.close(why)
        self._emitter.emit(event, *args)


_HANDLERS: dict[type[Message], Any] = {
    ParticipantJoined: Room._on_participant_joined,
    ParticipantLeft: Room._on_participant_left,
    ParticipantUpdated: Room._on_participant_updated,
    TrackPublished: Room._on_track_published,
    TrackUnpublished: Room._on_track_unpublished,
    TrackMuted: Room._on_track_muted,
    RoomUpdated: Room._on_room_updated,
    CountsChanged: Room._on_counts,
    ActiveSpeakersChanged: Room._on_active_speakers,
    HandChanged: Room._on_hand,
    AudienceChanged: Room._on_audience,
    DataReceived: Room._on_data,
    TierChanged: Room._on_tier_changed,
    VideoLayer: Room._on_video_layer,
}
