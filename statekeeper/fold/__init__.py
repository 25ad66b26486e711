"""The fold: `apply(state, seq, event) -> outcomes`, the statekeeper's every decision.

Deterministic and pure apart from updating `state` in place: no IO, no clock, no ids made
here (they arrive on the event; the one derived id, an auto-created room's sid, comes from
the log sequence). Each event costs O(1) work in the room's size, except the few that by
their nature touch every session (deleting a room, losing an edge). Replaying the same log
gives the same state and the same outcomes.

One dispatch table (`dispatch.HANDLERS`) maps each event type to its handler; the handlers
live by topic: `rooms`, `sessions` (join, leave, resume, grace), `participants` (details,
tiers, removal), `tracks` (publications, mutes, subscriptions), `media` (forwarder
placement) and `agents` (agent jobs). Importing this package registers them all.
"""

from __future__ import annotations

from statekeeper.fold import agents, media, participants, rooms, sessions, tracks
from statekeeper.fold.dispatch import HANDLERS, apply
from statekeeper.fold.participants import REVOKED_KEPT_MS
from statekeeper.fold.replies import session_subject
from statekeeper.fold.sessions import REVOKED_MESSAGE

__all__ = [
    "HANDLERS",
    "REVOKED_KEPT_MS",
    "REVOKED_MESSAGE",
    "agents",
    "apply",
    "media",
    "participants",
    "rooms",
    "session_subject",
    "sessions",
    "tracks",
]
