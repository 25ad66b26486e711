"""Nested values shared by many messages: grants, participants, tracks, rooms, counts."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.codec import MaxBytes, NoControl, Struct

ID_CHARS = 256
METADATA_BYTES = 64 * 1024
ATTRIBUTES_BYTES = 64 * 1024
ATTRIBUTES_ITEMS = 1024
DATA_BYTES = 15 * 1024
"""An application's data payload: at most 15 KiB (LiveKit's limit)."""
ENVELOPE_BYTES = 3 * 1024
"""What a reserved topic (`schemas.streams`) may carry beyond `DATA_BYTES`: the envelope
around a full 15 KiB RPC payload (its ids, method and tags, ids of up to 1 KiB of UTF-8
each), so that RPC keeps LiveKit's 15 KiB promise."""
CARRIED_DATA_BYTES = DATA_BYTES + ENVELOPE_BYTES
"""The most a data frame's payload holds on the wire (only on a reserved topic)."""

Identity = Annotated[str, Meta(max_length=ID_CHARS), NoControl()]
"""A participant id, a room id, a sid, a topic: at most 256 characters, no control
characters (C0, DEL, C1)."""
Name = Annotated[str, Meta(max_length=ID_CHARS)]
"""A display name or a reason: at most 256 characters, no NUL (like every wire string)."""
Metadata = Annotated[str, Meta(max_length=METADATA_BYTES), MaxBytes(METADATA_BYTES)]
"""Free-form participant or room metadata: at most 64 KiB."""
Attributes = Annotated[
    dict[str, str], Meta(max_length=ATTRIBUTES_ITEMS), MaxBytes(ATTRIBUTES_BYTES)
]
"""Participant attributes: at most 64 KiB of keys and values together."""
DataPayload = Annotated[bytes, Meta(max_length=DATA_BYTES), MaxBytes(DATA_BYTES)]
"""A data message's payload: at most 15 KiB."""
CarriedPayload = Annotated[bytes, Meta(max_length=CARRIED_DATA_BYTES), MaxBytes(CARRIED_DATA_BYTES)]
"""A `publish_data` or `data` frame's payload: at most 15 KiB, or `CARRIED_DATA_BYTES` on a
reserved topic (`schemas.streams.data_limit`; the edge checks which)."""
IdList = Annotated[tuple[Identity, ...], Meta(max_length=1024)]

HAND_ATTRIBUTE = "hand"
"""The participant attribute that carries a raised hand (clients, edge and fold agree)."""
HAND_RAISED = "raised"
"""`HAND_ATTRIBUTE`'s value while the hand is up (any other value, or none: it is down)."""

Tier = Literal["speaker", "viewer"]
ParticipantKind = Literal["standard", "sip", "agent", "ingress"]
TrackKind = Literal["audio", "video"]
TrackSource = Literal["camera", "microphone", "screen_share", "screen_share_audio", "unknown"]


class Grant(Struct, frozen=True, kw_only=True):
    """What a participant may do. Field names are snake_case; tokens carry camelCase."""

    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_subscribe_data: bool = True
    can_moderate: bool = False
    can_record: bool = False
    can_hls: bool = False
    can_livestream: bool = False

    @property
    def privileged(self) -> bool:
        """True when any grant a roomless token may not carry is set."""
        return self.can_moderate or self.can_record or self.can_hls or self.can_livestream


class TrackInfo(Struct, frozen=True, kw_only=True):
    """A published track."""

    sid: Identity
    kind: TrackKind
    source: TrackSource = "unknown"
    name: Name = ""
    muted: bool = False


class ParticipantInfo(Struct, frozen=True, kw_only=True):
    """A participant as other clients see it."""

    sid: Identity
    id: Identity
    name: Name = ""
    is_viewer: bool = False
    kind: ParticipantKind = "standard"
    metadata: Metadata = ""
    attributes: Attributes = msgspec.field(default_factory=dict)
    tracks: Annotated[tuple[TrackInfo, ...], Meta(max_length=64)] = ()
    joined_at: int = 0


class Counts(Struct, frozen=True, kw_only=True):
    """Live participant counts of a room, by tier."""

    speaker: int = 0
    viewer: int = 0
    total: int = 0


MAX_ACTIVE_SPEAKERS = 32
"""The most speakers one `active_speakers` frame lists (the loudest ones)."""


class ActiveSpeaker(Struct, frozen=True, kw_only=True):
    """A participant who is talking, with their smoothed audio level."""

    participant_id: Identity
    level: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    """Linear amplitude, 0 (silence) to 1 (full scale), smoothed over about half a second."""


class RoomInfo(Struct, frozen=True, kw_only=True):
    """A room as clients and the server API see it."""

    id: Identity
    sid: Identity
    metadata: Metadata = ""
    max_participants: int = 0
    empty_timeout: int = 300
    departure_timeout: int = 20
    livestream: bool = False
    created_at: int = 0
    counts: Counts = Counts()
