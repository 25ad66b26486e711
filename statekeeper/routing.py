"""The read API when statekeepers share the partitions: each request to its room's holder.

Edges and the server API keep asking on `stagecast.sk.api` (a queue group: any
statekeeper process takes a request). `Router` answers it from the partition's own
`Queries` when this process holds the room's partition, and otherwise forwards the
request's bytes to ``stagecast.sk.part.<p>``, which only the partition's holder
subscribes to (once it has recovered), and relays the reply. While a partition changes
hands nobody answers there: the router tries again until `FORWARD_DEADLINE_S`, then
replies `UNAVAILABLE`. A pagination cursor names its room and its snapshot only, and the
rows live in the shared store, so a cursor from before a takeover goes on working.

`ListRoomsRequest` without room ids asks every partition; `HealthRequest` is this
process's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from roomlog.natslink import NatsLink
from schemas import subjects
from schemas.api import HealthReply, HealthRequest, ListRoomsRequest, RoomListReply
from schemas.client import Error
from schemas.codec import Message, SchemaError, decode, encode
from schemas.errors import ErrorCode
from schemas.models import RoomInfo
from statekeeper.partitions import PartitionHost

log = logging.getLogger("stagecast.statekeeper.routing")

FORWARD_DEADLINE_S = 1.8
"""How long a request waits for its partition's holder (edges give up after 2 s)."""
_RETRY_S = 0.05


class Router:
    """Routes `stagecast.sk.api` requests to the holder of each room's partition."""

    def __init__(
        self,
        nc: Any,
        host: PartitionHost,
        partitions: int,
        *,
        link: NatsLink | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.nc = nc
        self.host = host
        self.partitions = partitions
        self.link = link
        self._clock = clock or asyncio.get_running_loop().time
        self._sub: Any = None

    async def start(self) -> None:
        """Take requests on `stagecast.sk.api` (queue group ``statekeeper``)."""
        self._sub = await self.nc.subscribe(
            subjects.STATEKEEPER_API, queue="statekeeper", cb=self._on_request
        )

    async def stop(self) -> None:
        """Take no more requests. Idempotent."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        try:
            data = await self.answer(msg.data)
        except SchemaError as exc:
            data = encode(Error(code=exc.code.value, message=str(exc)))
        except Exception as exc:
            log.exception("routing a request failed")
            data = encode(Error(code=ErrorCode.INTERNAL.value, message=type(exc).__name__))
        if msg.reply:
            await self.nc.publish(msg.reply, data)

    async def answer(self, data: bytes) -> bytes:
        """The reply's bytes to one request's bytes."""
        request = decode(data)
        if isinstance(request, HealthRequest):
            return encode(self.health())
        if isinstance(request, ListRoomsRequest):
            return encode(await self.rooms(request))
        room_id = getattr(request, "room_id", None)
        if not isinstance(room_id, str):
            return encode(_error(ErrorCode.UNKNOWN_TYPE, f"no statekeeper answers {request.TYPE}"))
        return await self._ask(subjects.partition_of(room_id, self.partitions), request, data)

    async def _ask(self, p: int, request: Message, data: bytes) -> bytes:
        deadline = self._clock() + FORWARD_DEADLINE_S
        while True:
            local = self.host.queries.get(p)
            if local is not None:
                return await local.reply_bytes(request)
            try:
                left = max(0.05, deadline - self._clock())
                reply = await self.nc.request(
                    subjects.statekeeper_partition_api(p), data, timeout=left
                )
                return bytes(reply.data)
            except nats.errors.NoRespondersError:
                pass  # nobody holds it right now (a takeover): ask again
            except nats.errors.TimeoutError:
                break
            if self._clock() >= deadline:
                break
            await asyncio.sleep(_RETRY_S)
        return encode(_error(ErrorCode.UNAVAILABLE, f"partition {p} has no statekeeper now"))

    async def rooms(self, request: ListRoomsRequest) -> RoomListReply:
        """Rooms from every partition (or from the partitions of the ids asked for)."""
        if request.room_ids is None:
            asks = {p: request for p in range(self.partitions)}
        else:
            by_partition: dict[int, list[str]] = {}
            for room_id in request.room_ids:
                by_partition.setdefault(subjects.partition_of(room_id, self.partitions), []).append(
                    room_id
                )
            asks = {p: ListRoomsRequest(room_ids=tuple(ids)) for p, ids in by_partition.items()}
        replies = await asyncio.gather(*(self._ask(p, ask, encode(ask)) for p, ask in asks.items()))
        found: dict[str, RoomInfo] = {}
        for data in replies:
            reply = decode(data)
            if isinstance(reply, RoomListReply):
                found.update({room.id: room for room in reply.rooms})
            # a partition with no holder right now lists nothing (it reappears after)
        wanted = request.room_ids if request.room_ids is not None else sorted(found)
        return RoomListReply(rooms=tuple(found[r] for r in wanted if r in found))

    def health(self) -> HealthReply:
        """This process's health: every partition it holds recovered and following."""
        keepers = list(self.host.keepers.values())
        link = self.link
        return HealthReply(
            service="statekeeper",
            ok=self.host.caught_up() and bool(self.nc.is_connected),
            applied_seq=max((k.applied_seq for k in keepers), default=0),
            rooms=sum(len(k.state.rooms) for k in keepers),
            persistence_state=max((k.persistence.persistence_state for k in keepers), default=0),
            persist_failures=sum(k.persistence.persist_failures_total for k in keepers),
            poisoned_events=sum(k.persistence.poisoned_events_total for k in keepers),
            nats_disconnects=link.disconnects if link is not None else 0,
            nats_reconnect_failures=link.failed_attempts if link is not None else 0,
            liveness_skipped=sum(k.liveness_skipped for k in keepers),
            forwarders=max((len(k.forwarders.live(k.clock())) for k in keepers), default=0),
        )


def _error(code: ErrorCode, message: str) -> Error:
    return Error(code=code.value, message=message)
