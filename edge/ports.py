"""The seam between a socket's session and the edge it runs on (STYLE rule 4).

`EdgeSession` (edge/session.py) needs a few things of its edge: the configuration, the
bus, the fan-out, the metrics, and a registry that routes direct replies to it. `EdgePort`
names exactly those; `EdgeNode` is the real one. The node in turn only knows a session as
a `Resident`: what it routes replies to, drains, supersedes and re-asserts. So neither
module imports the other, and `edge.app` wires the two together.
"""

from __future__ import annotations

from typing import Protocol

from edge.admission import JoinGate
from edge.bus import BusPort
from edge.config import EdgeConfig
from edge.deadlines import Deadlines
from edge.fanout import Fanout
from edge.latch import Latch
from edge.metrics import EdgeMetrics
from edge.tokencache import VerifiedTokens
from schemas.log import LogEvent


class Resident(Protocol):
    """What the edge knows of one socket's session."""

    @property
    def sid(self) -> str: ...

    @property
    def connection_id(self) -> str: ...

    @property
    def room_id(self) -> str: ...

    @property
    def epoch(self) -> int:
        """The connection epoch the statekeeper gave the session (0 until joined)."""

    @property
    def joined(self) -> bool:
        """Whether the session is in the room (the statekeeper accepted its join)."""

    @property
    def detached(self) -> Latch:
        """Set once the session left the fan-out and told the log what it had to."""

    @property
    def closed(self) -> Latch:
        """Set once the socket is closed."""

    def on_direct(self, data: bytes) -> None:
        """A frame the statekeeper (or a forwarder) sent to the session's subject."""

    def shutdown(self) -> None:
        """The edge is stopping: tell the client to resume elsewhere, then close."""

    def supersede(self) -> None:
        """Another socket of this edge resumed the session: close this one quietly."""


class EdgePort(Protocol):
    """What a session needs from its edge (`edge.node.EdgeNode` is the real one)."""

    @property
    def config(self) -> EdgeConfig: ...

    @property
    def edge_id(self) -> str: ...

    @property
    def metrics(self) -> EdgeMetrics: ...

    @property
    def bus(self) -> BusPort: ...

    @property
    def fanout(self) -> Fanout: ...

    @property
    def tokens(self) -> VerifiedTokens:
        """The participant tokens this edge verified (checked once, expiry respected)."""

    @property
    def join_gate(self) -> JoinGate:
        """The joins in flight on this edge, bounded (`SERVER_BUSY` beyond)."""

    @property
    def deadlines(self) -> Deadlines:
        """The sockets' join deadlines, on one loop timer."""

    def opened(self, session: Resident) -> None:
        """A socket was accepted (counted until `closed_socket`)."""

    def socket_joined(self, session: Resident) -> None:
        """A socket's join (or resume) was accepted: it no longer waits to join."""

    def closed_socket(self, session: Resident) -> None:
        """A socket is gone."""

    def register(self, session: Resident) -> None:
        """Route direct replies for `session.sid` to `session`."""

    def unregister(self, session: Resident) -> None:
        """Stop routing to `session` (a no-op when another socket took the sid over)."""

    def resident(self, sid: str) -> Resident | None:
        """The session this edge routes `sid` to, if any."""

    def departure_failed(self, event: LogEvent, msg_id: str) -> None:
        """A departure could not be appended: append it when NATS is back."""


__all__ = ["EdgePort", "Resident"]
