"""What the fold decides: outcomes the statekeeper's shell carries out.

The fold returns a list of these for each event; it never does IO itself. The shell
publishes `Broadcast` and `Direct` messages on core NATS, appends `PublicEvent`s to the
durable events stream, writes `RosterJoin`/`RosterLeave`/`RosterUpdate` to SQL, arms
`TimerDue` timers that later append timer events to the log, and marks `CountsMoved` rooms
for the count coalescer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from schemas.codec import Message
from schemas.log import LogEvent
from schemas.models import ParticipantInfo

Channel = Literal["speakers", "mod"]


@dataclasses.dataclass(frozen=True, slots=True)
class Broadcast:
    """A frame for every client of the room (`speakers`) or its moderators (`mod`)."""

    room_id: str
    channel: Channel
    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class Direct:
    """A frame for one session (`subject` is its `sess.<edge>.<sid>`) or an API caller."""

    subject: str
    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class PublicEvent:
    """A durable integration event; `message.id` makes its append idempotent."""

    room_id: str
    name: str
    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class RosterJoin:
    """A participant entered a tier at log sequence `seq` (a new roster row)."""

    room_id: str
    participant: ParticipantInfo
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class RosterLeave:
    """A participant left the tier it entered at `since_seq`, at log sequence `seq`."""

    room_id: str
    sid: str
    since_seq: int
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class RosterUpdate:
    """A rostered participant's details changed (name, metadata, attributes, tracks)."""

    room_id: str
    participant: ParticipantInfo
    since_seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class TimerDue:
    """Append `event` to the log at wall time `event.at` (unless it was already)."""

    event: LogEvent


@dataclasses.dataclass(frozen=True, slots=True)
class CountsMoved:
    """The room's tier counts changed; the coalescer decides when clients hear of it."""

    room_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class RoomEnded:
    """The room is gone; the shell drops its coalescer and timers."""

    room_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class MediaChanged:
    """A session's desired media changed: its forwarder must hear the new state.

    `forwarder` is where its media is (or was, for a session that just left; "" for a
    session that needs one placed); `published` says its published tracks changed, so its
    subscribers' states change too.
    """

    room_id: str
    sid: str
    identity: str
    forwarder: str
    published: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationsChanged:
    """The state-wide revoked token ids changed; the shell snapshots them at its next
    checkpoint."""


Outcome = (
    Broadcast
    | Direct
    | PublicEvent
    | RosterJoin
    | RosterLeave
    | RosterUpdate
    | TimerDue
    | CountsMoved
    | RoomEnded
    | MediaChanged
    | RevocationsChanged
)
