"""The fold's one dispatch table, and the lookups that open most handlers.

Each topic module registers its handlers here with one of four decorators: `handles` (the
handler finds what it needs itself), `on_room` (the event's room, or `ROOM_NOT_FOUND`),
`on_session` (the room and the session the event's `sid` names, or `NOT_JOINED`) and
`on_participant` (the room and the session of the event's `participant_id`, or
`ROOM_NOT_FOUND` / `PARTICIPANT_NOT_FOUND`). A refused lookup replies and stops there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from schemas.errors import ErrorCode
from schemas.log import ACTION_DEADLINE_MS, LogEvent
from statekeeper.fold.replies import error
from statekeeper.outcomes import Outcome
from statekeeper.state import Room, SessionRecord, State

E = TypeVar("E", bound=LogEvent)
Handler = Callable[[State, int, Any, list[Outcome]], None]
RoomHandler = Callable[[State, int, E, Room, list[Outcome]], None]
SessionHandler = Callable[[State, int, E, Room, SessionRecord, list[Outcome]], None]

HANDLERS: dict[type[LogEvent], Handler] = {}
"""Event type -> its handler: the only dispatch table of the fold."""


def apply(state: State, seq: int, event: LogEvent, stored_at: int = 0) -> list[Outcome]:
    """Fold one room-log event (at stream sequence `seq`) into `state`; return outcomes.

    `stored_at` is when JetStream stored the event (ms; 0: unknown). An action stored more
    than `ACTION_DEADLINE_MS` after its `at` is answered `UNAVAILABLE` and not applied: its
    edge has told the client it failed (a publish buffered through a NATS reconnect, say).
    """
    out: list[Outcome] = []
    handler = HANDLERS.get(type(event))
    if handler is not None and event.reply_to and stored_at - event.at > ACTION_DEADLINE_MS:
        late = stored_at - event.at
        error(event, ErrorCode.UNAVAILABLE, f"the action reached the room log {late} ms late", out)
    elif handler is not None:
        handler(state, seq, event, out)
        room = state.rooms.get(event.room_id)
        if room is not None:
            room.last_seq = seq
    return out


def handles(cls: type[E]) -> Callable[[Callable[[State, int, E, list[Outcome]], None]], Handler]:
    """Register `fn(state, seq, event, out)` as the handler of events of type `cls`."""

    def register(fn: Callable[[State, int, E, list[Outcome]], None]) -> Handler:
        if cls in HANDLERS:
            raise TypeError(f"{cls.__name__} has a handler already")
        HANDLERS[cls] = fn
        return fn

    return register


def on_room(cls: type[E]) -> Callable[[RoomHandler[E]], RoomHandler[E]]:
    """Register `fn(state, seq, event, room, out)`; a missing room is `ROOM_NOT_FOUND`."""

    def register(fn: RoomHandler[E]) -> RoomHandler[E]:
        def handler(state: State, seq: int, event: Any, out: list[Outcome]) -> None:
            room = _room_or_refuse(state, event, out)
            if room is not None:
                fn(state, seq, event, room, out)

        handles(cls)(handler)
        return fn

    return register


def on_session(cls: type[E]) -> Callable[[SessionHandler[E]], SessionHandler[E]]:
    """Register `fn(state, seq, event, room, session, out)` for an action of a session (its
    `sid`); a session not in the room is `NOT_JOINED`."""

    def register(fn: SessionHandler[E]) -> SessionHandler[E]:
        def handler(state: State, seq: int, event: Any, out: list[Outcome]) -> None:
            found = find_session(state, event)
            if found is None:
                error(event, ErrorCode.NOT_JOINED, "the session is not in the room", out)
                return
            fn(state, seq, event, *found, out)

        handles(cls)(handler)
        return fn

    return register


def on_participant(cls: type[E]) -> Callable[[SessionHandler[E]], SessionHandler[E]]:
    """Register `fn(state, seq, event, room, session, out)` for an admin action naming a
    `participant_id`; a missing room or participant is refused with its code."""

    def register(fn: SessionHandler[E]) -> SessionHandler[E]:
        def handler(state: State, seq: int, event: Any, out: list[Outcome]) -> None:
            room = _room_or_refuse(state, event, out)
            if room is None:
                return
            session = room.session_by_identity(event.participant_id)
            if session is None:
                error(event, ErrorCode.PARTICIPANT_NOT_FOUND, f"no {event.participant_id!r}", out)
                return
            fn(state, seq, event, room, session, out)

        handles(cls)(handler)
        return fn

    return register


def find_session(state: State, event: Any) -> tuple[Room, SessionRecord] | None:
    """The room and the session the event's `room_id` and `sid` name, or None."""
    room = state.rooms.get(event.room_id)
    session = room.sessions.get(event.sid) if room is not None else None
    if room is None or session is None:
        return None
    return room, session


def _room_or_refuse(state: State, event: Any, out: list[Outcome]) -> Room | None:
    room = state.rooms.get(event.room_id)
    if room is None:
        error(event, ErrorCode.ROOM_NOT_FOUND, f"no room {event.room_id!r}", out)
    return room
