"""A socket's frames in: handled one at a time, in order, with a task only while one is.

The socket hands each whole message to `Inbox.put` as it arrives. With nothing being
handled, a task starts for it at once; a message that arrives meanwhile waits in a short
line and the socket stops reading (the rest waits in the kernel) until the line is empty
again. An idle socket has neither a task nor a line.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

Message = tuple[bytes | None, str | None]
"""A whole message: (binary payload, None) or (None, text)."""


class Reading(Protocol):
    """The socket's side of the backpressure."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Inbox:
    """One socket's messages in (see the module docstring).

    `handle` serves one message; `on_failure` hears of an exception it raised (the inbox
    goes on with the next message).
    """

    __slots__ = ("_handle", "_handling", "_line", "_loop", "_on_failure", "_waiting")

    def __init__(
        self,
        handle: Callable[[bytes | None, str | None], Coroutine[Any, Any, None]],
        line: Reading,
        on_failure: Callable[[BaseException], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._handle = handle
        self._loop = loop
        """The loop the tasks run on, when the caller knows it (else the running one, asked
        per message: `get_running_loop` checks the process id, a system call)."""
        self._line = line
        self._on_failure = on_failure
        self._handling: asyncio.Task[None] | None = None
        self._waiting: collections.deque[Message] | None = None
        """Messages that arrived while one was handled (None while none wait)."""

    @property
    def busy(self) -> bool:
        """Whether a message is being handled."""
        return self._handling is not None

    def __len__(self) -> int:
        """Messages waiting behind the one being handled."""
        return len(self._waiting) if self._waiting else 0

    def put(self, data: bytes | None, text: str | None) -> None:
        if self._handling is None:
            self._start(data, text)
            return
        if self._waiting is None:
            self._waiting = collections.deque()
            self._line.pause_reading()
        self._waiting.append((data, text))

    def stop(self) -> asyncio.Task[None] | None:
        """Forget the waiting messages and cancel the one being handled (its task is
        returned, to be awaited); the inbox takes no more."""
        handling, self._handling = self._handling, None
        self._waiting = None
        self._handle = _ignore
        if handling is not None:
            handling.cancel()
        return handling

    def _start(self, data: bytes | None, text: str | None) -> None:
        task = (self._loop or asyncio.get_running_loop()).create_task(self._handle(data, text))
        self._handling = task
        task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        if task is not self._handling:
            return  # stopped meanwhile
        self._handling = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_failure(exc)
        if self._handling is not None:
            return  # the failure handler put a message in
        waiting = self._waiting
        if waiting:
            self._start(*waiting.popleft())
        if not waiting and waiting is not None:
            self._waiting = None
            self._line.resume_reading()


async def _ignore(data: bytes | None, text: str | None) -> None:
    """What a stopped inbox does with a message."""


__all__ = ["Inbox", "Message", "Reading"]
