"""Peer liveness: which edges still beat, and when silence may be judged at all.

Edges beat on `stagecast.edges.heartbeat`; an edge silent for `edge_timeout_ms` is lost
and each room it had sessions in gets an `EdgeLost` (its sessions enter their grace). A
statekeeper judges silence only while its own NATS link is up, and has been for a whole
timeout (`may_judge`): cut off itself, it would otherwise find every peer lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from nats.aio.msg import Msg

from schemas.api import EdgeGone, EdgeHeartbeat
from schemas.codec import SchemaError, decode
from schemas.log import EdgeLost, LogEvent
from statekeeper.state import Room

log = logging.getLogger("stagecast.statekeeper")


class Liveness:
    """Edge heartbeats seen, edges judged lost, and the own-link rule for judging."""

    def __init__(
        self,
        *,
        clock: Callable[[], int],
        link_up: Callable[[], bool],
        edge_timeout_ms: int,
        rooms: Callable[[], Mapping[str, Room]],
        append: Callable[[str, LogEvent], None],
    ) -> None:
        self._clock = clock
        self._link_up = link_up
        self._edge_timeout_ms = edge_timeout_ms
        self._rooms = rooms
        self._append = append
        self._edges_seen: dict[str, int] = {}
        self._lost_edges: set[str] = set()
        self._link_up_at: int | None = None
        """When this statekeeper's own NATS link was last seen coming up (None: down)."""
        self.skipped = 0
        """Liveness checks skipped because this statekeeper's own link was down or new."""

    def start(self) -> None:
        """After recovery: every edge the state names counts as seen now."""
        now = self._clock()
        for room in self._rooms().values():
            for edge_id in room.by_edge:
                self._edges_seen.setdefault(edge_id, now)
        self._link_up_at = now if self._link_up() else None

    async def on_heartbeat(self, msg: Msg) -> None:
        """An edge beat (it lives) or said it is going (judge it at once)."""
        try:
            beat = decode(msg.data)
        except SchemaError:
            return
        if isinstance(beat, EdgeHeartbeat):
            self._edges_seen[beat.edge_id] = self._clock()
            self._lost_edges.discard(beat.edge_id)
        elif isinstance(beat, EdgeGone):
            self._edges_seen[beat.edge_id] = 0
            self.check_edges(only=beat.edge_id)  # the others are judged on the clock

    def may_judge(self, timeout_ms: int) -> bool:
        """Whether silence from a peer means anything: only while this statekeeper's own
        NATS link is up, and has been for a whole `timeout_ms` (so every live peer has had
        the time to beat since). Judged while it is down, every edge would look lost."""
        now = self._clock()
        if not self._link_up():
            self._link_up_at = None
        elif self._link_up_at is None:
            self._link_up_at = now
        if self._link_up_at is not None and now - self._link_up_at >= timeout_ms:
            return True
        self.skipped += 1
        return False

    def check_edges(self, only: str | None = None) -> None:
        """Log an `EdgeLost` in every room of each edge silent past its timeout."""
        now = self._clock()
        for edge_id, seen in list(self._edges_seen.items()):
            if only is not None and edge_id != only:
                continue
            if now - seen < self._edge_timeout_ms or edge_id in self._lost_edges:
                continue
            self._lost_edges.add(edge_id)
            log.warning("edge %s stopped heart-beating; its sessions enter the grace", edge_id)
            for room in list(self._rooms().values()):
                if edge_id in room.by_edge:
                    event = EdgeLost(room_id=room.id, at=now, edge_id=edge_id)
                    self._append(f"edge-lost:{edge_id}:{room.id}:{seen}", event)
