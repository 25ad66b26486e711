"""One endpoint's sender: its durable consumer, its room queues, its POSTs (the shell).

Each endpoint reads `STAGECAST_EVENTS` through its own durable consumer (explicit acks,
up to `max_pending` unacknowledged), so endpoints never wait for each other. Events go
into per-room queues (`webhooks.rooms`); one worker per room with pending events POSTs
them in order and acknowledges each once delivered or given up. A later event of a room
is acknowledged only after the earlier ones, never before.

Restarts: on start the consumer is recreated to begin at its ack floor (the first event
not yet acknowledged), so every event not known delivered is POSTed again, in stream order
(events acknowledged above the floor are sent again too: duplicates, with the same
``webhook-id``). The first start of an endpoint begins with new events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas.codec import SchemaError, decode
from schemas.subjects import EVENTS_STREAM
from schemas.webhooks import (
    PublicEventMessage,
    encode_webhook,
    event_name,
    webhook_event,
)
from webhooks.delivery import Backoff, Verdict, judge
from webhooks.endpoints import Endpoint
from webhooks.http import EndpointPool
from webhooks.rooms import RoomQueues
from webhooks.signing import (
    LIVEKIT_CONTENT_TYPE,
    header_id,
    livekit_authorization,
    standard_headers,
)

__all__ = ["EndpointSender", "SenderSettings"]

log = logging.getLogger("stagecast.webhooks")
_PUBLIC = tuple(PublicEventMessage.__args__)
RETRY_FETCH = 0.5
"""Seconds between fetches while NATS is unreachable."""


@dataclasses.dataclass(frozen=True, slots=True)
class SenderSettings:
    """What every endpoint's sender shares. `api_key`/`api_secret` sign the LiveKit
    ``Authorization`` token."""

    api_key: str
    api_secret: str
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    request_timeout: float = 10.0
    max_connections: int = 256
    """Concurrent POSTs to one endpoint (rooms beyond it wait their turn)."""
    ssl_context: ssl.SSLContext | None = None
    """For ``https`` endpoints: None verifies against the system's CAs."""
    max_pending: int = 10_000
    fetch_batch: int = 256


@dataclasses.dataclass(slots=True)
class _Pending:
    msg: Any
    event_id: str
    body: bytes
    stored_at: float
    """When the stream stored the event (epoch seconds): the horizon counts from it, so a
    restart does not give an event another full horizon."""


class EndpointSender:
    """Delivers every event one endpoint wants, until `stop` or a 410 disables it."""

    def __init__(
        self,
        js: JetStreamContext,
        http: EndpointPool,
        endpoint: Endpoint,
        settings: SenderSettings,
        rng: random.Random | None = None,
    ) -> None:
        self.js = js
        self.http = http
        self.endpoint = endpoint
        self.settings = settings
        self.rng = rng or random.Random()
        self.queues: RoomQueues[_Pending] = RoomQueues(settings.max_pending)
        self.disabled = asyncio.Event()
        self.bound = asyncio.Event()
        """Set once its consumer is (re)created: events appended from then on are sent."""
        self.delivered = 0
        self.given_up = 0
        self._space = asyncio.Event()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._failure: BaseException | None = None

    async def bind(self) -> Any:
        """(Re)create the durable consumer at its ack floor and return a pull subscription."""
        name = self.endpoint.consumer
        config = ConsumerConfig(
            durable_name=name,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.backoff.horizon + 3600.0,
            max_deliver=-1,
            max_ack_pending=self.settings.max_pending,
            deliver_policy=DeliverPolicy.NEW,
        )
        await self._stream_exists()
        try:
            info = await self.js.consumer_info(EVENTS_STREAM, name)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = info.ack_floor.stream_seq + 1 if info.ack_floor else 1
            await self.js.delete_consumer(EVENTS_STREAM, name)
        await self.js.add_consumer(EVENTS_STREAM, config)
        return await self.js.pull_subscribe_bind(durable=name, stream=EVENTS_STREAM)

    async def _stream_exists(self) -> None:
        """Wait until the events stream exists (the statekeeper and edges create it)."""
        told = False
        while True:
            try:
                await self.js.stream_info(EVENTS_STREAM)
                return
            except nats.js.errors.NotFoundError:
                if not told:
                    log.info("waiting for the %s stream to be created", EVENTS_STREAM)
                    told = True
            await asyncio.sleep(RETRY_FETCH)

    async def run(self) -> None:
        """Fetch and deliver until cancelled or disabled (then its consumer is deleted)."""
        sub = await self.bind()
        self.bound.set()
        try:
            while not self.disabled.is_set():
                if self._failure is not None:
                    raise self._failure
                if self.queues.full:
                    self._space.clear()
                    await self._space.wait()
                    continue
                try:
                    msgs = await sub.fetch(self.settings.fetch_batch, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue  # nats-py raises either when nothing came in time
                except nats.errors.Error as exc:  # NATS is away: the link reconnects
                    log.warning("webhooks: fetch failed (%s); trying again", type(exc).__name__)
                    await asyncio.sleep(RETRY_FETCH)
                    continue
                for msg in msgs:
                    await self._take(msg)
        finally:
            for task in self._workers.values():
                task.cancel()
            for task in list(self._workers.values()):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.disabled.is_set():
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(EVENTS_STREAM, self.endpoint.consumer)

    async def _take(self, msg: Any) -> None:
        try:
            event = decode(msg.data)
        except SchemaError as exc:
            log.warning("skipping an undecodable public event: %s", exc)
            await self._skip(msg)
            return
        if not isinstance(event, _PUBLIC) or not self.endpoint.wants(event):
            await self._skip(msg)
            return
        room = event.room.id if hasattr(event, "room") else event.room_id
        body = encode_webhook(webhook_event(event))
        stored_at = msg.metadata.timestamp.timestamp()
        pending = _Pending(msg, header_id(event.id), body, stored_at)
        if self.queues.add(room, msg.metadata.sequence.stream, pending):
            self._workers[room] = asyncio.create_task(self._room(room))
        log.debug("queued %s %s for %s", event_name(event), event.id, self.endpoint.url)

    async def _skip(self, msg: Any) -> None:
        """Acknowledge an event this endpoint does not get (a lost ack: seen again later)."""
        with contextlib.suppress(nats.errors.Error):
            await msg.ack()

    async def _room(self, room: str) -> None:
        """POST the room's events one by one, each acknowledged once done with."""
        try:
            while (item := self.queues.head(room)) is not None:
                if not await self._deliver(item):
                    return  # disabled: nothing acknowledged, a restart sends it again
                await self._ack(item)
                self.queues.pop(room)
                self._space.set()
        except Exception as exc:  # a bug, not an endpoint's answer: end the sender loudly
            log.exception("webhook room worker for %s failed", self.endpoint.url)
            self._failure = exc
            self._space.set()
        finally:
            if self._workers.get(room) is asyncio.current_task():
                del self._workers[room]

    async def _ack(self, item: _Pending) -> None:
        """Acknowledge a delivered event. An ack lost to a NATS outage is not retried: the
        event stays below the ack floor and is sent again (same id) after a restart."""
        try:
            await item.msg.ack()
        except nats.errors.Error as exc:
            log.warning("webhook %s: ack lost (%s)", item.event_id, type(exc).__name__)

    async def _post(self, item: _Pending) -> int | None:
        now = int(time.time())
        headers = standard_headers(self.endpoint.key, item.event_id, now, item.body)
        headers["content-type"] = LIVEKIT_CONTENT_TYPE
        headers["authorization"] = livekit_authorization(
            self.settings.api_key, self.settings.api_secret, item.body, now
        )
        return await self.http.post(headers, item.body)

    async def _deliver(self, item: _Pending) -> bool:
        """Attempt until delivered or given up (True), or disabled by a 410 (False)."""
        retry = 0
        while True:
            status = await self._post(item)
            retry += 1
            age = max(0.0, time.time() - item.stored_at)
            verdict, delay = judge(status, retry, age, self.settings.backoff, self.rng.random())
            if verdict is Verdict.DELIVERED:
                self.delivered += 1
                return True
            if verdict is Verdict.DISABLE:
                log.error("webhook endpoint %s answered 410 Gone: disabled", self.endpoint.url)
                self.disabled.set()
                self._space.set()
                return False
            if verdict is Verdict.GIVE_UP:
                self.given_up += 1
                log.error(
                    "webhook %s to %s given up after %d attempts (last answer %s)",
                    item.event_id,
                    self.endpoint.url,
                    retry,
                    status,
                )
                return True
            await asyncio.sleep(delay)
