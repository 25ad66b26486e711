"""The edge's one NATS connection and what it does over it (STYLE rule 8).

`Bus.connect` is the only place the edge opens a connection; everything else borrows the
bus. Appends go to the room log through `RoomLog` (JetStream, deduplicated by message id);
reads are core request/reply on `stagecast.sk.api`; broadcasts and heartbeats are core
publishes. Failures surface as `BusUnavailable`, which callers answer with `UNAVAILABLE`.

The edge never creates the room log: the statekeeper does (it alone knows the partitions,
which are fixed when the stream is made). An edge started first waits for the stream
(`wait_for_log`); meanwhile an append asks JetStream once more (`log_exists`, one question
however many appends wait) and is refused at once when the stream is still missing, naming
it, so a client joining then gets `UNAVAILABLE` (retryable) instead of waiting, and one
joining the moment the statekeeper has made it gets in.

`BusPort` is what the edge's sessions, fan-out and handlers use of the bus (STYLE rule 4):
`Bus` is the real one; the tests' in-memory twin passes the same contract test class.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edge.awaited import OUTCOME_MAX_PAUSE, OUTCOME_WAIT
from roomlog.connect import NatsAuth, connect
from roomlog.errors import NatsUnreachable
from roomlog.jetstream import FastDelivery, RawHandler
from roomlog.log import RoomLog
from roomlog.natslink import NatsLink
from roomlog.retry import RetryBudgetSpent, RetryPolicy
from roomlog.seam import Unsubscribable
from schemas.api import ActionOutcome, ActionOutcomeRequest
from schemas.codec import Message, SchemaError, decode, encode
from schemas.log import LogEvent
from schemas.subjects import LOG_STREAM, STATEKEEPER_API

log = logging.getLogger("stagecast.edge")

OUTCOME_TIMEOUT = 8.0
"""Seconds `Bus.append_and_wait` waits for an outcome by default (a server API call: the
SDK's HTTP timeout is 10 s); a statekeeper taking a partition over answers within it."""

Handler = Callable[[Msg], Awaitable[None]]


class BusUnavailable(Exception):
    """NATS or the statekeeper did not answer (in time)."""


class BusBusy(BusUnavailable):
    """The room log is overloaded: an append failed and the process's retry budget is
    spent (`roomlog.retry.RetryBudgetSpent`). Callers answer `SERVER_BUSY` where they can
    (the join), `UNAVAILABLE` elsewhere; either way the client may try again later."""


class BusPort(Protocol):
    """What the edge does over NATS: appends, requests, publishes and subscriptions.

    Every failure is a `BusUnavailable`; nothing else escapes.
    """

    @property
    def connected(self) -> bool:
        """Whether the NATS link is up now."""
        ...

    async def close(self) -> None:
        """Flush what is pending and close. Idempotent."""
        ...

    async def jetstream_ok(self, timeout: float) -> str | None:
        """None when JetStream answers within `timeout`, else why not."""
        ...

    async def subscribe(self, subject: str, handler: Handler) -> Unsubscribable:
        """Subscribe with a callback, confirmed by the server before returning."""
        ...

    async def flush(self) -> None:
        """Wait until the server has everything published so far."""
        ...

    async def publish(self, subject: str, data: bytes) -> None:
        """A core publish (no confirmation)."""
        ...

    async def append(self, event: LogEvent, msg_id: str) -> int:
        """Append to the room log (deduplicated by `msg_id`); its sequence. Refused at once,
        never sent, while the link is down."""
        ...

    async def request(
        self, message: Message, *, subject: str = STATEKEEPER_API, timeout: float | None = None
    ) -> tuple[Message, bytes]:
        """A request (on `stagecast.sk.api` by default); the decoded reply and its bytes."""
        ...

    async def append_and_wait(
        self, make_event: Callable[[str], LogEvent], msg_id: str, timeout: float | None = None
    ) -> tuple[Message, bytes]:
        """Append `make_event(inbox)` and wait for the one reply sent to that inbox."""
        ...


class Bus:
    """NATS for one edge: the connection, the room log, request/reply and publishes."""

    def __init__(
        self,
        nc: NATS,
        room_log: RoomLog,
        request_timeout: float,
        event_retry: RetryPolicy | None = None,
        outcome_timeout: float = OUTCOME_TIMEOUT,
    ) -> None:
        self.nc = nc
        self.room_log = room_log
        self.request_timeout = request_timeout
        self.event_retry = event_retry if event_retry is not None else RetryPolicy()
        """How long an event no client waits on (no `reply_to`: a departure, sessions
        re-asserted) is retried: past a whole leader election, since the action deadline
        does not apply to it. Actions are retried for `append_timeout` only."""
        self.refused_appends = 0
        """Appends refused at once because NATS was disconnected (never sent)."""
        self.replies_recovered = 0
        """Outcomes of `append_and_wait` that did not come, sent from the statekeeper's copy."""
        self.outcome_timeout = outcome_timeout
        """Seconds `append_and_wait` waits for an outcome (asking for it meanwhile)."""
        self.link: NatsLink | None = None
        """The connection's state and counters (set by `connect`)."""
        self.log_ready = False
        """Whether the room log's stream exists (`wait_for_log`); appends wait for it."""
        self._log_check: asyncio.Future[bool] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        append_timeout: float = 3.0,
        append_attempt_timeout: float = 1.0,
        request_timeout: float = 2.0,
        connect_timeout: float = 10.0,
        auth: NatsAuth | None = None,
    ) -> Bus:
        """Connect (reconnecting forever afterwards) and see whether the room log exists.

        The streams are the statekeeper's to create; when the log is not there yet,
        `log_ready` is False and `wait_for_log` waits for it.

        `NatsAuthRefused` (wrong credentials) is raised as it is: no retry will help.
        An append is tried for `append_timeout` seconds in all, each attempt waiting
        `append_attempt_timeout` for its ack (a leader election is ridden out within that).
        """

        link = NatsLink(name, log)
        try:
            # Nothing is buffered while reconnecting (connect's default): an append made
            # then fails at once instead of landing after the client was told it failed.
            nc = await connect(
                url,
                name=name,
                link=link,
                role="edge",
                auth=auth,
                connect_timeout=connect_timeout,
            )
        except NatsUnreachable as exc:
            raise BusUnavailable(str(exc)) from None
        try:
            room_log = RoomLog(
                nc.jetstream(),
                ack_timeout=min(append_attempt_timeout, append_timeout),
                retry=RetryPolicy(deadline=append_timeout),
                shared_inbox=True,
            )
            bus = cls(nc, room_log, request_timeout)
            bus.link = link
            bus.log_ready = await room_log.has_stream(LOG_STREAM)
        except BaseException:
            await nc.close()
            raise
        return bus

    async def wait_for_log(self, poll: float = 0.5) -> None:
        """Return once the room log's stream exists, asking every `poll` seconds.

        Logs once that it waits (naming the stream) and once when the stream is there."""
        if self.log_ready:
            return
        log.warning(
            "waiting for the room log: stream %s does not exist yet (a statekeeper creates it)",
            LOG_STREAM,
        )
        while not await self.log_exists():
            await asyncio.sleep(poll)
        log.info("stream %s exists: the edge takes actions", LOG_STREAM)

    async def log_exists(self) -> bool:
        """Whether the room log's stream exists, asking JetStream unless it is known to;
        callers at the same time share one question."""
        if self.log_ready:
            return True
        if self._log_check is None or self._log_check.done():
            self._log_check = asyncio.ensure_future(self.room_log.has_stream(LOG_STREAM))
        if await asyncio.shield(self._log_check):
            self.log_ready = True
        return self.log_ready

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def close(self) -> None:
        """Flush what is pending and close. Idempotent."""
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), 5.0)
        except Exception:
            await self.nc.close()

    # ------------------------------------------------------------------ primitives

    async def jetstream_ok(self, timeout: float) -> str | None:
        """None when JetStream answers within `timeout`, else why not."""
        try:
            await asyncio.wait_for(self.room_log.js.account_info(), timeout)
        except Exception as exc:
            return f"JetStream does not answer: {type(exc).__name__}"
        return None

    async def subscribe(self, subject: str, handler: Handler) -> Subscription:
        """Subscribe with a callback, confirmed by the server before returning."""
        sub = await self.nc.subscribe(subject, cb=handler)
        # nats-py writes a flush's PING straight to the socket, ahead of commands still
        # queued for its flusher (this SUB among them), so one PONG proves nothing about
        # the SUB. By the first PONG the flusher has written the SUB; the second PING
        # follows it, and its PONG means the server has the subscription.
        await self.flush()
        await self.flush()
        return sub

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """`subscribe`, with each delivery handed to `handler(subject, reply, payload,
        headers)` as nats-py's reader parses it: no `Msg`, no queue, no task hop
        (`roomlog.jetstream.FastDelivery`; a plain callback when its internals moved).
        `handler` runs inside the reader: it must not block and must not raise."""

        async def fallback(msg: Msg) -> None:
            handler(msg.subject.encode(), msg.reply.encode(), msg.data, None)

        sub = await self.subscribe(subject, fallback)
        FastDelivery.route(self.nc, sub, handler)
        return sub

    async def flush(self) -> None:
        try:
            await self.nc.flush(timeout=max(1, round(self.request_timeout)))
        except Exception as exc:
            raise BusUnavailable(f"NATS flush failed: {type(exc).__name__}") from None

    async def publish(self, subject: str, data: bytes) -> None:
        try:
            await self.nc.publish(subject, data)
        except Exception as exc:
            raise BusUnavailable(f"NATS publish failed: {type(exc).__name__}") from None

    async def append(self, event: LogEvent, msg_id: str) -> int:
        """Append to the room log; `BusUnavailable` if JetStream did not confirm it.

        While NATS is disconnected the append is refused at once and never sent. One that
        was sent but not confirmed in time may still be stored; the statekeeper refuses any
        action stored more than `schemas.log.ACTION_DEADLINE_MS` after its `at`, so an
        action the edge reported as failed cannot take effect later. An event with no
        `reply_to` (no client waits on it) is retried for `event_retry` instead.
        """
        if not self.nc.is_connected:
            self.refused_appends += 1
            raise BusUnavailable("NATS is disconnected: the action was not sent")
        if not self.log_ready and not await self.log_exists():  # no coroutine once it does
            raise BusUnavailable(log_missing())
        try:
            retry = None if event.reply_to else self.event_retry
            return await self.room_log.append(event, msg_id, retry=retry)
        except RetryBudgetSpent as exc:
            raise BusBusy(str(exc)) from None
        except Exception as exc:
            raise BusUnavailable(f"room log append failed: {type(exc).__name__}") from None

    async def request(
        self, message: Message, *, subject: str = STATEKEEPER_API, timeout: float | None = None
    ) -> tuple[Message, bytes]:
        """A request on `stagecast.sk.api`; the decoded reply and its bytes."""
        try:
            reply = await self.nc.request(
                subject, encode(message), timeout=timeout or self.request_timeout
            )
        except Exception as exc:
            raise BusUnavailable(f"no answer on {subject}: {type(exc).__name__}") from None
        try:
            return decode(reply.data), reply.data
        except SchemaError as exc:
            raise BusUnavailable(f"unreadable answer on {subject}: {exc}") from None

    async def append_and_wait(
        self, make_event: Callable[[str], LogEvent], msg_id: str, timeout: float | None = None
    ) -> tuple[Message, bytes]:
        """Append an event whose outcome is replied to a fresh inbox, and wait for it.

        `make_event(inbox)` builds the event with ``reply_to=inbox``; the inbox is
        subscribed before the append, so the reply cannot be missed by this edge. It can be
        lost on the statekeeper's side (published while its NATS link was down: core NATS
        keeps nothing), so a reply not here after `OUTCOME_WAIT` seconds (or half of
        `timeout`, when that is shorter) is asked for (`ActionOutcomeRequest`, the
        statekeeper's copy, `statekeeper.recent`), again after doubling pauses, until
        `timeout` seconds (default `outcome_timeout`) have passed since the append was
        confirmed.
        """
        inbox = self.nc.new_inbox()
        try:
            sub = await self.nc.subscribe(inbox, max_msgs=1)
        except Exception as exc:
            raise BusUnavailable(f"NATS subscribe failed: {type(exc).__name__}") from None
        try:
            event = make_event(inbox)
            seq = await self.append(event, msg_id)
            data = await self._outcome(sub, event.room_id, seq, timeout or self.outcome_timeout)
            try:
                return decode(data), data
            except SchemaError as exc:
                raise BusUnavailable(f"unreadable outcome: {exc}") from None
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is closing; nothing to clean up
                log.debug("unsubscribe failed: %s", exc)

    async def _outcome(self, sub: Subscription, room_id: str, seq: int, timeout: float) -> bytes:
        """The reply on `sub` to the action stored at `seq`, or the statekeeper's copy of it
        (see `append_and_wait`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wait = min(OUTCOME_WAIT, timeout / 2)
        why = "TimeoutError"
        while True:
            try:
                msg = await sub.next_msg(timeout=max(0.001, min(wait, deadline - loop.time())))
            except nats.errors.TimeoutError:
                pass
            except Exception as exc:  # the subscription ended (the connection closed)
                raise BusUnavailable(
                    f"no outcome from the statekeeper: {type(exc).__name__}"
                ) from None
            else:
                return bytes(msg.data)
            if loop.time() >= deadline or not room_id:
                break
            try:
                answer = await ask_outcome(
                    self,
                    room_id,
                    seq,
                    sub.subject,
                    timeout=max(0.001, min(self.request_timeout, deadline - loop.time())),
                )
            except BusUnavailable as exc:
                answer, why = None, str(exc)
            if answer is not None and answer.folded:
                if answer.frame is None:
                    why = "its reply was lost and is not kept any more"
                    break
                self.replies_recovered += 1
                log.debug("the reply to log sequence %d did not come: the statekeeper's copy", seq)
                return answer.frame
            wait = min(wait * 2, OUTCOME_MAX_PAUSE)
            if loop.time() >= deadline:
                break
        raise BusUnavailable(f"no outcome from the statekeeper: {why}")


async def ask_outcome(
    bus: BusPort, room_id: str, seq: int, reply_to: str, *, timeout: float | None = None
) -> ActionOutcome | None:
    """The statekeeper's copy of the reply it sent to `reply_to` for the action at log
    sequence `seq` (`ActionOutcomeRequest`); None when it answers something else.
    `BusUnavailable` when it does not answer."""
    request = ActionOutcomeRequest(room_id=room_id, seq=seq, reply_to=reply_to)
    reply, _data = await bus.request(request, timeout=timeout)
    return reply if isinstance(reply, ActionOutcome) else None


def log_missing() -> str:
    """Why the edge refuses actions before the room log exists."""
    return f"waiting for the room log: a statekeeper has not made stream {LOG_STREAM} yet"


__all__ = ["Bus", "BusBusy", "BusPort", "BusUnavailable", "Handler", "ask_outcome", "log_missing"]
