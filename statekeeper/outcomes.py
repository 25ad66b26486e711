"""What the fold decides: outcomes the statekeeper's shell carries out.

The fold returns a list of these for each event; it never does IO itself. The shell
publishes `Broadcast` and `Direct` messages on core NATS, appends `PublicEvent`s to the
durable events stream, writes `RosterJoin`/`RosterLeave`/`RosterUpdate` to SQL, arms
`TimerDue` timers that later append timer events to the log, and marks `CountsMoved` rooms
for the count coalescer.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.codec import Message
from schemas.log import LogEvent
from schemas.models import ParticipantInfo

Channel = Literal["speakers", "mod"]


class Broadcast(msgspec.Struct, frozen=True, gc=False):
    """A frame for every client of the room (`speakers`) or its moderators (`mod`)."""

    room_id: str
    channel: Channel
    message: Message


class Direct(msgspec.Struct, frozen=True, gc=False):
    """A frame for one session (`subject` is its `sess.<edge>.<sid>`) or an API caller;
    `answers` when it is the reply to the event's `reply_to` (kept for a caller that missed
    it, `statekeeper.recent`)."""

    subject: str
    message: Message
    answers: bool = False


class PublicEvent(msgspec.Struct, frozen=True, gc=False):
    """A durable integration event; `message.id` makes its append idempotent."""

    room_id: str
    name: str
    message: Message


class RosterJoin(msgspec.Struct, frozen=True, gc=False):
    """A participant entered a tier at log sequence `seq` (a new roster row)."""

    room_id: str
    participant: ParticipantInfo
    seq: int


class RosterLeave(msgspec.Struct, frozen=True, gc=False):
    """A participant left the tier it entered at `since_seq`, at log sequence `seq`."""

    room_id: str
    sid: str
    since_seq: int
    seq: int


class RosterUpdate(msgspec.Struct, frozen=True, gc=False):
    """A rostered participant's details changed (name, metadata, attributes, tracks)."""

    room_id: str
    participant: ParticipantInfo
    since_seq: int


class TimerDue(msgspec.Struct, frozen=True, gc=False):
    """Append `event` to the log at wall time `event.at` (unless it was already)."""

    event: LogEvent


class CountsMoved(msgspec.Struct, frozen=True, gc=False):
    """The room's tier counts changed; the coalescer decides when clients hear of it."""

    room_id: str


class RoomEnded(msgspec.Struct, frozen=True, gc=False):
    """The room is gone; the shell drops its coalescer and timers."""

    room_id: str


class MediaChanged(msgspec.Struct, frozen=True, gc=False):
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


class RevocationsChanged(msgspec.Struct, frozen=True, gc=False):
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
