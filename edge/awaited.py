"""Replies to a socket's actions that did not come, asked for again from the statekeeper.

The statekeeper answers an action on the session's subject once it has folded it, over core
NATS, which keeps nothing: an answer published while the statekeeper's NATS link is down
(its node was killed just after the fold) or this edge's is, is lost. So is the answer to a
request sent again after `UNAVAILABLE` whose first copy was stored after all, when that
copy's answer was lost: JetStream drops the new copy as a duplicate, nothing is folded
again, and nothing is answered again. Either way the client would wait in vain.

So each socket keeps the actions whose append JetStream confirmed (with the log sequence it
gave: the first copy's, for a duplicate) until a reply to them passes through the session.
One not answered within `OUTCOME_WAIT` seconds is asked for (`ActionOutcomeRequest` on
`stagecast.sk.api`: the statekeeper keeps its recent replies, `statekeeper.recent`); asked
again after a growing pause while the statekeeper has not folded it yet or does not answer,
for `OUTCOME_PATIENCE` seconds at most. The frame it gives is handled as if it had come on
the subject, and a copy of it that comes afterwards is dropped (`replied`), so the client
gets one reply per attempt.

Bounded: `AWAITED_LIMIT` actions per socket (the oldest is given up first), each with one
timer or one question in flight; `AWAITED_LIMIT` last replies remembered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from schemas.api import ActionOutcome

log = logging.getLogger("stagecast.edge")

__all__ = [
    "AWAITED_LIMIT",
    "OUTCOME_MAX_PAUSE",
    "OUTCOME_PATIENCE",
    "OUTCOME_WAIT",
    "AwaitedOutcomes",
]

OUTCOME_WAIT = 2.0
"""Seconds after the append's confirmation before the reply is asked for (it takes a few
milliseconds when nothing is lost, and may take over a second on a loaded statekeeper)."""
OUTCOME_PATIENCE = 15.0
"""Seconds after the append's confirmation during which the reply is asked for (the SDKs
wait 10 s for a reply, and send a refused request again for 15 s)."""
OUTCOME_MAX_PAUSE = 2.0
"""The longest pause between two questions for one reply."""
AWAITED_LIMIT = 256
"""Actions awaited per socket, and replies remembered (the oldest go first)."""

Ask = Callable[[int], Awaitable[ActionOutcome | None]]
"""Asks the statekeeper for the reply to the action at a log sequence (None: no answer)."""


class _Awaited:
    """One action waiting for its reply: its timer, or its question in flight."""

    __slots__ = ("deadline", "pause", "req", "seq", "task", "timer")

    def __init__(self, req: int, seq: int, deadline: float, pause: float) -> None:
        self.req = req
        self.seq = seq
        self.deadline = deadline
        self.pause = pause
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


class AwaitedOutcomes:
    """One socket's actions waiting for their reply (see the module docstring).

    `ask` asks the statekeeper; `deliver` hands a recovered reply frame to the session, as
    if it had come on its subject (the session then calls `replied`).
    """

    __slots__ = (
        "_ask",
        "_deliver",
        "_limit",
        "_patience",
        "_seen",
        "_stopped",
        "_wait",
        "_waiting",
    )

    def __init__(
        self,
        ask: Ask,
        deliver: Callable[[bytes], None],
        *,
        wait: float = OUTCOME_WAIT,
        patience: float = OUTCOME_PATIENCE,
        limit: int = AWAITED_LIMIT,
    ) -> None:
        if limit < 1 or wait <= 0 or patience < wait:
            raise ValueError("needs limit >= 1 and 0 < wait <= patience")
        self._ask = ask
        self._deliver = deliver
        self._wait = wait
        self._patience = patience
        self._limit = limit
        self._waiting: OrderedDict[int, _Awaited] = OrderedDict()
        self._seen: OrderedDict[int, bytes] | None = None
        """The recovered reply frames that went out, by request id (made on the first)."""
        self._stopped = False

    def __len__(self) -> int:
        """Actions waiting for their reply."""
        return len(self._waiting)

    def appended(self, req: int, seq: int) -> None:
        """Request `req`'s append was confirmed at log sequence `seq`: its reply is awaited."""
        if self._stopped:
            return
        old = self._waiting.pop(req, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        entry = _Awaited(req, seq, loop.time() + self._patience, self._wait)
        entry.timer = loop.call_later(self._wait, self._asking, entry)
        self._waiting[req] = entry
        while len(self._waiting) > self._limit:
            _req, oldest = self._waiting.popitem(last=False)
            oldest.cancel()

    def replied(self, req: int, frame: bytes) -> bool:
        """A reply `frame` to `req` is on its way to the client: it is awaited no more.
        False when the same frame went out already (a recovered reply's late copy): drop it."""
        if self._seen is not None and self._seen.get(req) == frame:
            return False
        entry = self._waiting.pop(req, None)
        if entry is not None:
            entry.cancel()
        return True

    def _remember(self, req: int, frame: bytes) -> None:
        """A recovered reply went out: a late copy of it is to be dropped (`replied`)."""
        if self._seen is None:
            self._seen = OrderedDict()
        self._seen[req] = frame
        self._seen.move_to_end(req)
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def stop(self) -> None:
        """The socket is closing: give up every wait. Idempotent."""
        self._stopped = True
        waiting, self._waiting = self._waiting, OrderedDict()
        for entry in waiting.values():
            entry.cancel()

    def _asking(self, entry: _Awaited) -> None:
        entry.timer = None
        if self._waiting.get(entry.req) is entry:
            entry.task = asyncio.get_running_loop().create_task(self._ask_once(entry))

    async def _ask_once(self, entry: _Awaited) -> None:
        try:
            answer = await self._ask(entry.seq)
        except Exception as exc:  # the bus refuses (NATS away): ask again after the pause
            log.debug("asking for the reply to log sequence %d failed: %s", entry.seq, exc)
            answer = None
        entry.task = None
        if self._waiting.get(entry.req) is not entry:
            return  # answered meanwhile, superseded or stopped
        if answer is not None and answer.folded:
            del self._waiting[entry.req]
            if answer.frame is None:
                log.warning(
                    "the reply to request %d (log sequence %d) was lost and is not kept any more",
                    entry.req,
                    entry.seq,
                )
                return
            log.debug(
                "the reply to request %d (log sequence %d) did not come: the statekeeper's copy "
                "goes out",
                entry.req,
                entry.seq,
            )
            self._deliver(answer.frame)
            self._remember(entry.req, answer.frame)
            return
        loop = asyncio.get_running_loop()
        entry.pause = min(entry.pause * 2, OUTCOME_MAX_PAUSE)
        if loop.time() + entry.pause > entry.deadline:
            del self._waiting[entry.req]
            return
        entry.timer = loop.call_later(entry.pause, self._asking, entry)
