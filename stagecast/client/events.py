"""Event values the SDK emits, and the emitter behind `room.on` / `participant.on`.

Callbacks may be plain functions or coroutine functions (anything whose call returns an
awaitable): an awaitable result is run as its own task, started in emission order. A callback
that raises is logged and does not stop the others, nor the SDK. Some events are
*retroactive*: registering a listener for them replays the event at once for what is
already there (speakers already present, streams already published).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from schemas.models import TrackKind, TrackSource

log = logging.getLogger("stagecast.client")

Callback = Callable[..., Any]
"""A listener: called with the event's arguments; may return an awaitable."""
Replay = Callable[[], Iterable[tuple[Any, ...]]]
"""Produces the argument tuples to replay to a newly registered listener."""


class ConnectionState(enum.StrEnum):
    """Where a room's signaling connection is in its lifecycle."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"


@dataclasses.dataclass(frozen=True, slots=True)
class ParticipantCounts:
    """The room's live counts by tier (`participant-count-changed`)."""

    speaker: int
    viewer: int
    total: int


@dataclasses.dataclass(frozen=True, slots=True)
class DataMessage:
    """A data message from another participant or the server API (`data-received`).

    `sender_id` is None when the server API sent it.
    """

    payload: bytes
    sender_id: str | None
    topic: str | None
    reliable: bool


@dataclasses.dataclass(frozen=True, slots=True)
class StreamEvent:
    """A remote participant's stream (`stream-published` / `stream-unpublished`).

    Read it as attributes (`ev.kind`) or as a mapping (`ev["kind"]`).
    """

    kind: TrackKind
    source: TrackSource
    track_sid: str

    def __getitem__(self, key: str) -> str:
        if key not in ("kind", "source", "track_sid"):
            raise KeyError(key)
        value: str = getattr(self, key)
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    """A subscribed remote track (`stream-subscribed` / `stream-unsubscribed`).

    `track` is an aiortc `MediaStreamTrack`: `await track.recv()` yields decoded frames
    (`av.VideoFrame` / `av.AudioFrame`). `.video` / `.audio` give it when it is that kind.
    """

    participant_id: str
    kind: TrackKind
    track_sid: str
    track: Any = dataclasses.field(repr=False)

    @property
    def video(self) -> Any:
        return self.track if self.kind == "video" else None

    @property
    def audio(self) -> Any:
        return self.track if self.kind == "audio" else None


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionFailure:
    """A subscribed track that cannot be received (`track-subscription-failed`).

    `reason` is `CODEC_UNSUPPORTED` when this client cannot decode the track's codec
    (`codecs`: what the forwarder offered); `message` says it in words. The participant's
    other subscriptions are unaffected.
    """

    participant_id: str
    kind: TrackKind
    track_sid: str
    reason: str
    codecs: tuple[str, ...]
    message: str


class EventEmitter:
    """Named events with sync or async listeners, some of them retroactive.

    `tasks` collects the tasks of async listeners so that their owner can wait for them
    (or cancel them) when it closes; several emitters of one room share one set.
    """

    def __init__(self, events: Iterable[str], tasks: set[asyncio.Task[Any]]) -> None:
        self._events = frozenset(events)
        self._listeners: dict[str, list[Callback]] = {}
        self._replays: dict[str, Replay] = {}
        self._tasks = tasks

    @property
    def events(self) -> frozenset[str]:
        """Every event name this emitter knows."""
        return self._events

    def retroactive(self, event: str, replay: Replay) -> None:
        """Make `event` retroactive: a new listener first gets what `replay` yields."""
        self._check(event)
        self._replays[event] = replay

    def on(self, event: str, callback: Callback) -> Callback:
        """Register `callback` for `event` (`ValueError` for an unknown event name).

        A retroactive event is replayed to the new listener before `on` returns. Returns
        the callback, so `on` works as a decorator factory's target.
        """
        self._check(event)
        self._listeners.setdefault(event, []).append(callback)
        replay = self._replays.get(event)
        if replay is not None:
            for args in list(replay()):
                self._call(event, callback, args)
        return callback

    def off(self, event: str, callback: Callback) -> None:
        """Remove one registration of `callback` for `event` (no error if absent)."""
        self._check(event)
        listeners = self._listeners.get(event)
        if listeners and callback in listeners:
            listeners.remove(callback)

    def listeners(self, event: str) -> int:
        """How many listeners `event` has."""
        return len(self._listeners.get(event, ()))

    def emit(self, event: str, *args: Any) -> None:
        """Call every listener of `event` with `args`, in registration order."""
        for callback in list(self._listeners.get(event, ())):
            self._call(event, callback, args)

    def clear(self) -> None:
        """Forget every listener."""
        self._listeners.clear()

    def _check(self, event: str) -> None:
        if event not in self._events:
            known = ", ".join(sorted(self._events))
            raise ValueError(f"unknown event {event!r} (known: {known})")

    def _call(self, event: str, callback: Callback, args: tuple[Any, ...]) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.exception("%r listener %r failed", event, callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(lambda t: _finished(t, event, self._tasks))


def _finished(task: asyncio.Task[Any], event: str, tasks: set[asyncio.Task[Any]]) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("%r listener failed", event, exc_info=task.exception())


async def drain(tasks: set[asyncio.Task[Any]], timeout: float) -> None:
    """Wait up to `timeout` s for listener tasks (not the caller's own); cancel the rest."""
    current = asyncio.current_task()
    pending = {t for t in tasks if t is not current and not t.done()}
    if not pending:
        return
    _done, late = await asyncio.wait(pending, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=1.0)
