"""Room fan-out: one NATS subscription per room per edge, shared by its local sockets.

A room's subscription (``stagecast.room.<room>.*``) lives while at least one local socket
is in the room. Broadcast bytes go to each socket as they arrived, never re-encoded: each
broadcast is framed once per edge as a complete WebSocket frame (`edge.wsframe`) and those
bytes go to every recipient's transport. It is decoded once per edge only to decide where
it goes:

- ``speakers``: to every socket of the room; frames whose `seq` is below the last one
  relayed (or an exact repeat at that `seq`) are dropped, which is what a statekeeper
  restart replays. A `disconnect` there means the room was deleted: every socket of the
  room gets it and is closed.
- ``mod``: the same, to sockets whose grant has `can_moderate` only.
- ``counts``: to every socket through its latest-wins slot, within a CPU budget
  (`edge.counts.CountsRounds`: a storm's counts cannot starve the joins).
- ``voice``: forwarders' `SpeakerReport`s, merged and coalesced per room (`edge.voice`);
  the merged `active_speakers` frame, framed once, goes to every socket through its own
  latest-wins slot, within the counts CPU budget; a socket joining later gets the last one.
- ``data``: to sockets with `can_subscribe_data`, never to the sender's sid, and only to
  `destination_ids` (participant ids) when there are any; only while the room is within
  its data byte budget (`DataLimits`): a frame beyond it is delivered to no one here and
  counted (`room_data_drops`). Every edge of the room receives the same data frames and
  keeps its own budget over them, so the room's budget holds wherever its senders are.

The fan-out also keeps each local sender's data byte budget (`admit_data`), checked by the
edge before it publishes a data message.

Filters read each member's grant when a frame arrives, so a tier change applies at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from nats.aio.msg import Msg

from edge.bus import BusPort, BusUnavailable
from edge.counts import CPU_SHARE, CountsRounds
from edge.metrics import EdgeMetrics
from edge.ratelimit import DataLimits, TokenBucket
from edge.voice import RoomVoice
from edge.wsframe import binary_frame
from roomlog.seam import Unsubscribable
from schemas.client import ActiveSpeakersChanged, CountsChanged, DataReceived, Disconnect
from schemas.codec import Message, SchemaError, decode, encode
from schemas.media import SpeakerReport
from schemas.models import Grant
from schemas.subjects import room_wildcard

log = logging.getLogger("stagecast.edge")


class Member(Protocol):
    """What the fan-out needs of a local socket in a room."""

    @property
    def sid(self) -> str: ...

    @property
    def participant_id(self) -> str: ...

    @property
    def grant(self) -> Grant: ...

    def deliver(self, frame: bytes, type_tag: str, seq: int | None) -> None:
        """Send a broadcast, a complete WebSocket frame (seq None for data messages)."""

    def deliver_counts(self, frame: bytes, seq: int) -> bool:
        """Replace the socket's pending counts frame (a complete WebSocket frame); True
        when it went out or waits in the socket's queue."""

    def deliver_voice(self, frame: bytes, seq: int) -> bool:
        """Replace the socket's pending active speakers frame (`seq` unused); True when it
        went out or waits in the socket's queue."""

    def room_ended(self, frame: bytes, reason: str) -> None:
        """The room is gone: send `frame` (a disconnect, framed) and close."""


class _SeqFilter:
    """Drops replays: frames below the last seq, and exact repeats at the last seq."""

    __slots__ = ("last", "seen")

    def __init__(self) -> None:
        self.last = -1
        self.seen: list[bytes] = []

    def fresh(self, seq: int, data: bytes) -> bool:
        if seq < self.last:
            return False
        if seq == self.last:
            if data in self.seen:
                return False
            self.seen.append(data)
            return True
        self.last = seq
        self.seen = [data]
        return True


class RoomFanout:
    """The local sockets of one room and its subscription."""

    def __init__(
        self,
        room_id: str,
        metrics: EdgeMetrics,
        limits: DataLimits | None = None,
        counts_share: float = CPU_SHARE,
    ) -> None:
        self.room_id = room_id
        self.members: dict[str, Member] = {}
        self.metrics = metrics
        self.limits = DataLimits() if limits is None else limits
        self.data_budget = self.limits.room_bucket()
        self.senders: dict[str, TokenBucket] = {}
        """Byte budgets of local members that sent data, by sid."""
        self.subscription: Unsubscribable | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._speakers = _SeqFilter()
        self._mod = _SeqFilter()
        self._counts_seq = -1
        self.counts = CountsRounds(self.members, metrics, share=counts_share)
        self.voice = RoomVoice()
        self.voice_frame = b""
        """The last `active_speakers` frame sent, for late joiners (b"": nobody talks)."""
        self.voice_rounds = CountsRounds(
            self.members,
            metrics,
            share=counts_share,
            method="deliver_voice",
            type_tag=ActiveSpeakersChanged.TYPE,
        )
        self._voice_timer: asyncio.TimerHandle | None = None

    async def on_message(self, msg: Msg) -> None:
        """The subscription's callback: route one broadcast to the local sockets."""
        channel = msg.subject.rsplit(".", 1)[-1]
        data = msg.data
        try:
            message = decode(data)
        except SchemaError as exc:
            log.warning("undecodable broadcast on %s: %s", msg.subject, exc)
            return
        try:
            self.route(channel, message, data)
        except Exception:  # one bad frame must not kill the room's subscription
            log.exception("fan-out of %s failed", message.TYPE)

    def route(self, channel: str, message: Message, data: bytes) -> None:
        if channel == "counts":
            if isinstance(message, CountsChanged) and message.seq >= self._counts_seq:
                self._counts_seq = message.seq
                self.counts.offer(binary_frame(data), message.seq)
        elif channel == "data":
            if isinstance(message, DataReceived):
                self._data(message, data)
        elif channel == "voice":
            if isinstance(message, SpeakerReport) and message.room_id == self.room_id:
                self.voice.report(message, _now_ms())
                self._voice_check()
        elif channel in ("speakers", "mod"):
            if isinstance(message, Disconnect):
                frame = binary_frame(data)
                for member in list(self.members.values()):
                    member.room_ended(frame, message.reason)
                return
            seq = getattr(message, "seq", None)
            if not isinstance(seq, int):
                return
            seqs = self._speakers if channel == "speakers" else self._mod
            if not seqs.fresh(seq, data):
                return
            moderators_only = channel == "mod"
            frame = binary_frame(data)
            for member in list(self.members.values()):
                if not moderators_only or member.grant.can_moderate:
                    member.deliver(frame, message.TYPE, seq)

    def _voice_check(self) -> None:
        if self._voice_timer is not None:
            self._voice_timer.cancel()
            self._voice_timer = None
        now = _now_ms()
        speakers = self.voice.due(now)
        if speakers is not None:
            frame = binary_frame(encode(ActiveSpeakersChanged(speakers=speakers)))
            self.voice_frame = frame if speakers else b""
            self.voice_rounds.offer(frame, 0)
        at = self.voice.next_check(now)
        if at is not None:
            loop = asyncio.get_running_loop()
            self._voice_timer = loop.call_later(max(at - now, 1) / 1000, self._voice_check)

    def close(self) -> None:
        """Stop every delivery timer (the room has no local sockets here any more)."""
        self.counts.close()
        self.voice_rounds.close()
        if self._voice_timer is not None:
            self._voice_timer.cancel()
            self._voice_timer = None

    def admit_data(self, sid: str, size: int) -> bool:
        """Take `size` bytes from member `sid`'s data budget; False when over it."""
        bucket = self.senders.get(sid)
        if bucket is None:
            bucket = self.senders[sid] = self.limits.sender_bucket()
        return bucket.take(size)

    def _data(self, message: DataReceived, data: bytes) -> None:
        if not self.data_budget.take(len(data)):
            self.metrics.room_data_drops += 1
            self.metrics.room_data_dropped_bytes += len(data)
            return
        wanted = frozenset(message.destination_ids)
        frame = binary_frame(data)
        delivered = 0
        for member in list(self.members.values()):
            if not member.grant.can_subscribe_data:
                continue
            if message.sender_sid is not None and member.sid == message.sender_sid:
                continue
            if wanted and member.participant_id not in wanted:
                continue
            member.deliver(frame, message.TYPE, None)
            delivered += 1
        self.metrics.data_bytes_out += delivered * len(data)


class Fanout:
    """Every room this edge has local sockets in (refcounted subscriptions)."""

    def __init__(
        self,
        bus: BusPort,
        metrics: EdgeMetrics,
        limits: DataLimits | None = None,
        counts_share: float = CPU_SHARE,
    ) -> None:
        self.bus = bus
        self.metrics = metrics
        self.limits = DataLimits() if limits is None else limits
        """The data byte budgets of rooms subscribed from now on."""
        self.counts_share = counts_share
        """The CPU share of each room's counts delivery (`edge.counts`)."""
        self.rooms: dict[str, RoomFanout] = {}

    def admit_data(self, room_id: str, sid: str, size: int) -> bool:
        """Whether local member `sid` of `room_id` may send a data frame of `size` bytes now
        (its byte budget; see `DataLimits`). A sid in no room here is refused."""
        room = self.rooms.get(room_id)
        if room is None or sid not in room.members:
            return False
        return room.admit_data(sid, size)

    async def add(self, room_id: str, member: Member) -> None:
        """Put a socket in a room; the first one subscribes (confirmed by the server).

        Raises `BusUnavailable` when the subscription could not be made (the member is
        then not added).
        """
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = RoomFanout(
                room_id, self.metrics, self.limits, self.counts_share
            )
            room.members[member.sid] = member
            try:
                room.subscription = await self.bus.subscribe(
                    room_wildcard(room_id), room.on_message
                )
            except BaseException as exc:
                room.members.pop(member.sid, None)
                if self.rooms.get(room_id) is room:
                    del self.rooms[room_id]
                # Sockets that joined meanwhile fail with a reason of their own, never with
                # this task's cancellation.
                room.ready.set_exception(
                    BusUnavailable(f"room subscription failed: {type(exc).__name__}")
                )
                room.ready.exception()  # retrieved: no "never retrieved" warning
                await self._unsubscribe(room)
                raise
            room.ready.set_result(None)
            return
        room.members[member.sid] = member
        try:
            await asyncio.shield(room.ready)
        except BaseException:
            room.members.pop(member.sid, None)
            raise
        if room.voice_frame:
            member.deliver_voice(room.voice_frame, 0)

    async def remove(self, room_id: str, member: Member) -> None:
        """Take a socket out of its room; the last one out unsubscribes."""
        room = self.rooms.get(room_id)
        if room is None or room.members.get(member.sid) is not member:
            return
        del room.members[member.sid]
        room.senders.pop(member.sid, None)
        if room.members:
            return
        del self.rooms[room_id]
        room.close()
        if room.ready.done():
            await self._unsubscribe(room)

    async def _unsubscribe(self, room: RoomFanout) -> None:
        sub, room.subscription = room.subscription, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def close(self) -> None:
        """Drop every room subscription (the edge is stopping)."""
        rooms, self.rooms = list(self.rooms.values()), {}
        for room in rooms:
            room.close()
            room.members.clear()
            await self._unsubscribe(room)


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


__all__ = ["Fanout", "Member", "RoomFanout"]
