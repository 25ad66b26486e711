"""The edge's counters, rendered by hand in the Prometheus text exposition format.

Labels only ever take values from closed sets (message type tags the schemas know, error
codes), never a string a client chose, so a hostile client cannot blow up cardinality.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from schemas.codec import registered
from schemas.errors import ErrorCode

_KNOWN_TYPES = frozenset(registered())
_KNOWN_CODES = frozenset(code.value for code in ErrorCode)
INVALID_TYPE = "invalid"
"""The `type` label of a frame that could not be read or names an unknown type."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class EdgeMetrics:
    """Counters of one edge; gauges are read through callables when rendered."""

    def __init__(self) -> None:
        self.joins = 0
        self.queue_drops = 0
        self.stale_replies = 0
        self.appends_refused: Callable[[], int] = lambda: 0
        self.append_retries: Callable[[], tuple[int, int]] = lambda: (0, 0)
        """(room-log append attempts repeated, outages: episodes of failing appends)."""
        self.nats_link: Callable[[], tuple[int, int, int]] = lambda: (1, 0, 0)
        """(connected 0/1, disconnects, failed reconnect attempts) of the edge's NATS link."""
        self.data_bytes_out = 0
        """Bytes of data frames queued to sockets (a frame counts once per recipient)."""
        self.data_sender_refusals = 0
        self.room_data_drops = 0
        self.room_data_dropped_bytes = 0
        self.frames_in: collections.Counter[str] = collections.Counter()
        self.frames_out: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.join_timeouts = 0
        self.http_read_timeouts = 0
        self.liveness_drops = 0
        """WebSockets dropped by the liveness sweep (silent past the timeout)."""
        self.accept_failures = 0
        self.connections_refused: collections.Counter[str] = collections.Counter()
        """Connections refused over a cap, by the cap's scope (``edge`` or ``address``)."""
        self.sockets: Callable[[], int] = lambda: 0
        self.connections: Callable[[], int] = lambda: 0
        self.rooms: Callable[[], int] = lambda: 0

    def frame_in(self, type_tag: str) -> None:
        self.frames_in[type_tag if type_tag in _KNOWN_TYPES else INVALID_TYPE] += 1

    def frame_out(self, type_tag: str, n: int = 1) -> None:
        self.frames_out[type_tag if type_tag in _KNOWN_TYPES else INVALID_TYPE] += n

    def error(self, code: str) -> None:
        self.errors[code if code in _KNOWN_CODES else ErrorCode.INTERNAL.value] += 1

    def render(self) -> str:
        """The Prometheus text format (version 0.0.4)."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        def labelled(name: str, label: str, counter: collections.Counter[str]) -> None:
            for key in sorted(counter):
                lines.append(f'{name}{{{label}="{_escape(key)}"}} {counter[key]}')

        connected, disconnects, failures = self.nats_link()
        family("stagecast_edge_nats_connected", "gauge", "1 while the NATS link is up.")
        lines.append(f"stagecast_edge_nats_connected {connected}")
        family("stagecast_edge_nats_disconnects_total", "counter", "NATS link losses.")
        lines.append(f"stagecast_edge_nats_disconnects_total {disconnects}")
        family(
            "stagecast_edge_nats_reconnect_failures_total",
            "counter",
            "NATS reconnect attempts that failed.",
        )
        lines.append(f"stagecast_edge_nats_reconnect_failures_total {failures}")
        family("stagecast_edge_sockets", "gauge", "Open signaling sockets.")
        lines.append(f"stagecast_edge_sockets {self.sockets()}")
        family("stagecast_edge_rooms", "gauge", "Rooms with at least one local socket.")
        lines.append(f"stagecast_edge_rooms {self.rooms()}")
        family("stagecast_edge_joins_total", "counter", "Joins and resumes accepted.")
        lines.append(f"stagecast_edge_joins_total {self.joins}")
        family("stagecast_edge_frames_in_total", "counter", "Frames received, by type.")
        labelled("stagecast_edge_frames_in_total", "type", self.frames_in)
        family("stagecast_edge_frames_out_total", "counter", "Frames queued to sockets, by type.")
        labelled("stagecast_edge_frames_out_total", "type", self.frames_out)
        family("stagecast_edge_errors_total", "counter", "Error frames sent, by code.")
        labelled("stagecast_edge_errors_total", "code", self.errors)
        family(
            "stagecast_edge_queue_drops_total",
            "counter",
            "Sockets closed because their send queue was full.",
        )
        lines.append(f"stagecast_edge_queue_drops_total {self.queue_drops}")
        for name, help_text, value in (
            (
                "stagecast_edge_data_bytes_out_total",
                "Bytes of data frames queued to sockets, once per recipient.",
                self.data_bytes_out,
            ),
            (
                "stagecast_edge_data_sender_refusals_total",
                "Data messages refused (RATE_LIMITED) over their sender's byte budget.",
                self.data_sender_refusals,
            ),
            (
                "stagecast_edge_room_data_drops_total",
                "Data frames not delivered because their room was over its byte budget.",
                self.room_data_drops,
            ),
            (
                "stagecast_edge_room_data_dropped_bytes_total",
                "Bytes of the data frames dropped over their room's byte budget.",
                self.room_data_dropped_bytes,
            ),
            (
                "stagecast_edge_stale_replies_total",
                "Statekeeper answers for an earlier socket of a resumed session, dropped.",
                self.stale_replies,
            ),
            (
                "stagecast_edge_appends_refused_total",
                "Room-log appends refused at once because NATS was disconnected.",
                self.appends_refused(),
            ),
            (
                "stagecast_edge_append_retries_total",
                "Room-log append attempts repeated with the same message id (an election).",
                self.append_retries()[0],
            ),
            (
                "stagecast_edge_append_outages_total",
                "Episodes of failing room-log appends (a stream without a leader, say).",
                self.append_retries()[1],
            ),
        ):
            family(name, "counter", help_text)
            lines.append(f"{name} {value}")
        family("stagecast_edge_connections", "gauge", "Open connections served (HTTP and WS).")
        lines.append(f"stagecast_edge_connections {self.connections()}")
        family(
            "stagecast_edge_connections_refused_total",
            "counter",
            "Connections refused with TOO_MANY_CONNECTIONS, by the cap they hit.",
        )
        labelled("stagecast_edge_connections_refused_total", "scope", self.connections_refused)
        family(
            "stagecast_edge_join_timeouts_total",
            "counter",
            "Sockets closed with JOIN_TIMEOUT (no join within the deadline).",
        )
        lines.append(f"stagecast_edge_join_timeouts_total {self.join_timeouts}")
        family(
            "stagecast_edge_http_read_timeouts_total",
            "counter",
            "Connections closed because a request did not arrive in time.",
        )
        lines.append(f"stagecast_edge_http_read_timeouts_total {self.http_read_timeouts}")
        family(
            "stagecast_edge_liveness_drops_total",
            "counter",
            "WebSockets dropped because the peer stayed silent past the liveness timeout.",
        )
        lines.append(f"stagecast_edge_liveness_drops_total {self.liveness_drops}")
        family(
            "stagecast_edge_accept_failures_total",
            "counter",
            "accept() calls that failed for want of descriptors or memory (EMFILE and kin).",
        )
        lines.append(f"stagecast_edge_accept_failures_total {self.accept_failures}")
        return "\n".join(lines) + "\n"


__all__ = ["INVALID_TYPE", "EdgeMetrics"]
