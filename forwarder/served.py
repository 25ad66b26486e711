"""What a forwarder holds for each session it serves (`forwarder.sessions` keeps them)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from forwarder.errors import SubscriptionNotFound
from schemas.media import MediaSession, MediaSubscribedTrack

SessionKey = tuple[str, str]
"""(room id, sid)"""


@dataclass(slots=True)
class ServedLeg:
    """A subscriber connection carrying one track to one session."""

    subscriber_id: str
    spec: MediaSubscribedTrack
    epoch: int
    """The publication of the track it was made for (`Forwarder.epoch`)."""


class ServedSession:
    """What this forwarder holds for one session, and the state it should hold."""

    def __init__(self, room_id: str, sid: str) -> None:
        self.key: SessionKey = (room_id, sid)
        self.room_id = room_id
        self.sid = sid
        self.desired: MediaSession | None = None
        self.listed: set[str] = set()
        """Tracks any applied state listed: one missing from a later state is unpublished."""
        self.retired: set[str] = set()
        """Tracks unpublished that way: a late offer for one is refused."""
        self.publications: set[str] = set()
        self.legs: dict[str, ServedLeg] = {}
        self.wanted: set[str] = set()
        self.closed = False
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.dirty = False


def leg_of(session: ServedSession, track_sid: str) -> ServedLeg:
    leg = session.legs.get(track_sid)
    if leg is None:
        raise SubscriptionNotFound(session.sid, track_sid)
    return leg


def usable_subject(subject: str) -> bool:
    """Whether `subject` can be published to (no wildcard, no empty token, no space)."""
    tokens = subject.split(".")
    return bool(subject) and all(
        token and token not in ("*", ">") and not any(c.isspace() for c in token)
        for token in tokens
    )
