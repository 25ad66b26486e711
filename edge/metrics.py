"""The edge's counters, served on `/metrics` through `prometheus_client`.

The edge keeps plain integers on its hot paths (an increment is an attribute add); a
custom collector turns them into metric families when `/metrics` is read, next to the
client library's process, platform and garbage-collector collectors.

Labels only ever take values from closed sets (message type tags the schemas know, error
codes), never a string a client chose, so a hostile client cannot blow up cardinality.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from schemas.codec import registered
from schemas.errors import ErrorCode

CONTENT_TYPE: str = CONTENT_TYPE_PLAIN_0_0_4
"""What `render` produces: the Prometheus text exposition format 0.0.4."""

_KNOWN_TYPES = frozenset(registered())
_KNOWN_CODES = frozenset(code.value for code in ErrorCode)
INVALID_TYPE = "invalid"
"""The `type` label of a frame that could not be read or names an unknown type."""


class EdgeMetrics(Collector):
    """Counters of one edge; gauges are read through callables when collected.

    `registry` holds this collector and the process, platform and GC collectors.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(self)
        self.joins = 0
        self.sockets_opened = 0
        self.connections_accepted = 0
        """TCP connections accepted (HTTP or signaling, served or refused)."""
        self.counts_cpu_s = 0.0
        """CPU seconds spent in counts (and active speaker) rounds (`edge.counts`)."""
        """Signaling sockets opened: while it moves, joins go on (`edge.counts` paces)."""
        self.queue_drops = 0
        self.stale_replies = 0
        self.replies_recovered = 0
        """Action replies that did not come in time, sent from the statekeeper's copy."""
        self.reply_copies_dropped = 0
        """Late copies of replies that went out already from the statekeeper's copy."""
        self.appends_refused: Callable[[], int] = lambda: 0
        self.api_replies_recovered: Callable[[], int] = lambda: 0
        """Server API outcomes sent from the statekeeper's copy (`Bus.replies_recovered`)."""
        self.append_retries: Callable[[], tuple[int, int]] = lambda: (0, 0)
        """(room-log append attempts repeated, outages: episodes of failing appends)."""
        self.append_retries_denied: Callable[[], int] = lambda: 0
        """Failed appends not retried: the process's retry budget was spent."""
        self.joins_busy = 0
        """Joins answered `SERVER_BUSY` at once: the edge had its cap of joins in flight."""
        self.joins_in_flight: Callable[[], int] = lambda: 0
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
        self.loop_lag: Callable[[], float] = lambda: 0.0
        """The largest delay of the loop-lag probe lately (seconds; `edge.looplag`)."""
        self.accept_failures = 0
        self.connections_refused: collections.Counter[str] = collections.Counter()
        """Connections refused over a cap, by the cap's scope (``edge`` or ``address``)."""
        self.sockets: Callable[[], int] = lambda: 0
        self.sockets_unjoined: Callable[[], int] = lambda: 0
        self.upgrades_refused: Callable[[], collections.Counter[str]] = collections.Counter
        """Signaling upgrades answered 503 while the edge was behind, by reason."""
        self.connections: Callable[[], int] = lambda: 0
        self.rooms: Callable[[], int] = lambda: 0

    def arrivals(self) -> int:
        """Signaling sockets opened plus connections accepted: while it moves, clients are
        arriving and joins go on (`edge.counts` paces by it), whether their upgrade is
        taken, refused, or has not come yet (a starved client sends it late)."""
        return self.sockets_opened + self.connections_accepted

    def frame_in(self, type_tag: str) -> None:
        self.frames_in[type_tag if type_tag in _KNOWN_TYPES else INVALID_TYPE] += 1

    def frame_out(self, type_tag: str, n: int = 1) -> None:
        self.frames_out[type_tag if type_tag in _KNOWN_TYPES else INVALID_TYPE] += n

    def error(self, code: str) -> None:
        self.errors[code if code in _KNOWN_CODES else ErrorCode.INTERNAL.value] += 1

    def render(self) -> bytes:
        """Every collector of `registry` in the text format `CONTENT_TYPE` names."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The edge's metric families (the `Collector` protocol of prometheus_client)."""
        connected, disconnects, failures = self.nats_link()
        retries, outages = self.append_retries()
        yield _gauge("stagecast_edge_nats_connected", "1 while the NATS link is up.", connected)
        yield _counter("stagecast_edge_nats_disconnects_total", "NATS link losses.", disconnects)
        yield _counter(
            "stagecast_edge_nats_reconnect_failures_total",
            "NATS reconnect attempts that failed.",
            failures,
        )
        yield _gauge("stagecast_edge_sockets", "Open signaling sockets.", self.sockets())
        yield _gauge(
            "stagecast_edge_sockets_unjoined",
            "Open signaling sockets not yet joined.",
            self.sockets_unjoined(),
        )
        yield _labelled(
            "stagecast_edge_upgrades_refused_total",
            "Signaling upgrades answered 503 SERVER_BUSY, by reason (loop_lag, unjoined).",
            "reason",
            self.upgrades_refused(),
        )
        yield _gauge(
            "stagecast_edge_joins_in_flight",
            "Joins and resumes appended and not yet answered.",
            self.joins_in_flight(),
        )
        yield _gauge(
            "stagecast_edge_loop_lag_seconds",
            "The largest delay of the event loop's lag probe over the liveness timeout.",
            self.loop_lag(),
        )
        yield _gauge("stagecast_edge_rooms", "Rooms with at least one local socket.", self.rooms())
        yield _counter("stagecast_edge_joins_total", "Joins and resumes accepted.", self.joins)
        yield _labelled(
            "stagecast_edge_frames_in_total", "Frames received, by type.", "type", self.frames_in
        )
        yield _labelled(
            "stagecast_edge_frames_out_total",
            "Frames queued to sockets, by type.",
            "type",
            self.frames_out,
        )
        yield _labelled(
            "stagecast_edge_errors_total", "Error frames sent, by code.", "code", self.errors
        )
        for name, help_text, value in (
            (
                "stagecast_edge_queue_drops_total",
                "Sockets closed because their send queue was full.",
                self.queue_drops,
            ),
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
                "stagecast_edge_replies_recovered_total",
                "Action replies (sockets' and server API calls') that did not come in time, "
                "asked for and sent from the statekeeper's copy.",
                self.replies_recovered + self.api_replies_recovered(),
            ),
            (
                "stagecast_edge_reply_copies_dropped_total",
                "Replies that came after their recovered copy went out (late, not lost), dropped.",
                self.reply_copies_dropped,
            ),
            (
                "stagecast_edge_appends_refused_total",
                "Room-log appends refused at once because NATS was disconnected.",
                self.appends_refused(),
            ),
            (
                "stagecast_edge_append_retries_total",
                "Room-log append attempts repeated with the same message id (an election).",
                retries,
            ),
            (
                "stagecast_edge_append_retries_denied_total",
                "Failed room-log appends not retried because the retry budget was spent.",
                self.append_retries_denied(),
            ),
            (
                "stagecast_edge_joins_busy_total",
                "Joins answered SERVER_BUSY because the edge had its cap of joins in flight.",
                self.joins_busy,
            ),
            (
                "stagecast_edge_append_outages_total",
                "Episodes of failing room-log appends (a stream without a leader, say).",
                outages,
            ),
        ):
            yield _counter(name, help_text, value)
        yield _gauge(
            "stagecast_edge_connections",
            "Open connections served (HTTP and WS).",
            self.connections(),
        )
        yield _labelled(
            "stagecast_edge_connections_refused_total",
            "Connections refused with TOO_MANY_CONNECTIONS, by the cap they hit.",
            "scope",
            self.connections_refused,
        )
        yield _counter(
            "stagecast_edge_counts_cpu_seconds_total",
            "CPU seconds spent writing counts and active speaker rounds.",
            self.counts_cpu_s,
        )
        for name, help_text, value in (
            (
                "stagecast_edge_join_timeouts_total",
                "Sockets closed with JOIN_TIMEOUT (no join within the deadline).",
                self.join_timeouts,
            ),
            (
                "stagecast_edge_http_read_timeouts_total",
                "Connections closed because a request did not arrive in time.",
                self.http_read_timeouts,
            ),
            (
                "stagecast_edge_liveness_drops_total",
                "WebSockets dropped because the peer stayed silent past the liveness timeout.",
                self.liveness_drops,
            ),
            (
                "stagecast_edge_accept_failures_total",
                "accept() calls that failed for want of descriptors or memory (EMFILE and kin).",
                self.accept_failures,
            ),
        ):
            yield _counter(name, help_text, value)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _labelled(
    name: str, help_text: str, label: str, counter: collections.Counter[str]
) -> CounterMetricFamily:
    """A counter family with one sample per key of `counter` (keys from a closed set)."""
    family = CounterMetricFamily(name, help_text, labels=[label])
    for key in sorted(counter):
        family.add_metric([key], counter[key])
    return family


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` in a `/metrics` text (None when absent).

    Parsed with prometheus_client's parser, so any number format the exposition uses
    (``1.0``, ``1.234567e+06``) reads back as its float."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


__all__ = ["CONTENT_TYPE", "INVALID_TYPE", "EdgeMetrics", "sample_value"]
