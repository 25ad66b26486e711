"""Pipelined JetStream appends: the ack window `RoomLog.append_many` publishes through."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from roomlog.jetstream import FastDelivery, Publish, parse_status, publish_all


class AckWindow:
    """Pipelined JetStream publishes: publish `n` asks for its ack on ``<inbox>.<n>``.

    nats-py's `publish_async` costs 40-50 µs of CPU per message here (a future, a token, a
    parsed `PubAck`, a callback task hop); this costs 12-14 µs: a window of publishes is
    queued as one pre-encoded write (`publish_many`, through `jetstream.publish_all`), acks
    arrive raw (`FastDelivery`) and are read by one msgspec decoder.
    """

    def __init__(self, nc: NATS, ack_timeout: float) -> None:
        self._nc = nc
        self._ack_timeout = ack_timeout
        self._inbox = nc.new_inbox()
        self._cut = len(self._inbox) + 1
        self._acks: dict[int, tuple[bytes, bytes | dict[str, str] | None]] = {}
        self._arrived = asyncio.Event()
        self._sent = 0
        self._confirmed = 0
        self._sub: Subscription | None = None

    @property
    def unconfirmed(self) -> int:
        """Publishes whose ack has not been taken yet."""
        return self._sent - self._confirmed

    async def __aenter__(self) -> AckWindow:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        FastDelivery.route(self._nc, self._sub, self._on_raw)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await FastDelivery.drop(self._nc, sub)

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._acks[int(subject[self._cut :])] = (data, headers)
        self._arrived.set()

    async def _on_msg(self, msg: Msg) -> None:  # used when the fast path is unavailable
        self._acks[int(msg.subject[self._cut :])] = (msg.data, msg.headers)
        self._arrived.set()

    async def publish_many(self, messages: Sequence[tuple[str, bytes, str]]) -> None:
        """Queue `(subject, payload, msg_id)` publishes in order, as one socket write."""
        first = self._sent
        self._sent += len(messages)
        inbox = self._inbox
        batch: list[Publish] = [
            (subject, f"{inbox}.{n}", payload, msg_id)
            for n, (subject, payload, msg_id) in enumerate(messages, first)
        ]
        await publish_all(self._nc, batch)

    async def confirm_next(self) -> int:
        """Wait for the oldest unconfirmed publish's ack; its stream sequence.

        Raises `nats.errors.TimeoutError`, `nats.js.errors.NoStreamResponseError` or the
        `APIError` the server answered.
        """
        n = self._confirmed
        deadline = time.monotonic() + self._ack_timeout
        while n not in self._acks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise nats.errors.TimeoutError
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        data, headers = self._acks.pop(n)
        self._confirmed += 1
        if not data:
            status, description, _ = parse_status(headers)
            if status == "503":
                raise nats.js.errors.NoStreamResponseError
            raise nats.js.errors.APIError(code=int(status or 0), description=description)
        return _ack_seq(data)


class _PubAck(msgspec.Struct):
    """The fields of a JetStream publish ack read here (the rest is ignored)."""

    seq: int = 0
    error: dict[str, Any] | None = None


_read_ack = msgspec.json.Decoder(_PubAck).decode


def _ack_seq(data: bytes) -> int:
    """The stream sequence of a JetStream publish ack; raises the `APIError` it carries."""
    try:
        ack = _read_ack(data)
    except msgspec.DecodeError as exc:
        raise nats.js.errors.APIError(description=f"unreadable publish ack: {exc}") from None
    if ack.error is not None:
        raise nats.js.errors.APIError.from_error(ack.error)
    return ack.seq
