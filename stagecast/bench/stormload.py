"""The storm's overload figures: who was told to wait, retries, and why sockets dropped.

A client only sees that its socket closed: with a close code when the edge said why, as a
TCP error when it did not (a liveness drop aborts the socket, as does a client process
that ran out of descriptors). The edges count their own side in `/metrics`; read at the
end of a storm (and their loop lag at the end of the join phase), they say which drops
were the edge's and how far behind its loop was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import httpx

from edge.metrics import sample_value
from stagecast.bench import Result

EDGE_COUNTERS: dict[str, str] = {
    "append_retries": "stagecast_edge_append_retries_total",
    "append_retries_denied": "stagecast_edge_append_retries_denied_total",
    "joins_busy": "stagecast_edge_joins_busy_total",
    "liveness_drops": "stagecast_edge_liveness_drops_total",
    "slow_consumer_closes": "stagecast_edge_queue_drops_total",
    "loop_lag_s": "stagecast_edge_loop_lag_seconds",
    "http_read_timeouts": "stagecast_edge_http_read_timeouts_total",
    "join_timeouts": "stagecast_edge_join_timeouts_total",
    "counts_cpu_s": "stagecast_edge_counts_cpu_seconds_total",
}
"""What is read from each edge's `/metrics` (summed over edges; the lag: the largest)."""
EDGE_LABELLED: dict[str, tuple[str, dict[str, str]]] = {
    "upgrades_refused_lag": ("stagecast_edge_upgrades_refused_total", {"reason": "loop_lag"}),
    "upgrades_refused_unjoined": (
        "stagecast_edge_upgrades_refused_total",
        {"reason": "unjoined"},
    ),
    "refused_over_cap": ("stagecast_edge_connections_refused_total", {"scope": "edge"}),
}
"""Labelled samples read the same way (summed over edges)."""


async def edge_counters(urls: Sequence[str]) -> dict[str, float]:
    """`EDGE_COUNTERS` of every edge at `urls` (an edge that does not answer is skipped;
    a sample an edge does not have counts as 0)."""
    got = dict.fromkeys([*EDGE_COUNTERS, *EDGE_LABELLED], 0.0)
    async with httpx.AsyncClient(timeout=10.0) as http:
        for url in urls:
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(f"{url}/metrics")
                if response.status_code != 200:
                    continue  # an edge at its connection cap answers 503
                text = response.text
                for key, name in EDGE_COUNTERS.items():
                    value = sample_value(text, name) or 0.0
                    got[key] = max(got[key], value) if key == "loop_lag_s" else got[key] + value
                for key, (name, labels) in EDGE_LABELLED.items():
                    got[key] += sample_value(text, name, **labels) or 0.0
    return got


def overload_figures(
    told_to_wait: tuple[int, int],
    refused_upgrades: tuple[int, int],
    tcp_drops: int,
    end: dict[str, float],
    join_end: dict[str, float],
    edge_join_cpu_s: float,
) -> list[Result]:
    """The figures of docs/benchmarks.md's storm section, "overload": from the clients'
    tallies ((clients, answers) told to wait at the join and refused at the upgrade), the
    edges' counters at the end (`end`) and at the end of the join phase (`join_end`, and
    the edges' CPU over it, `edge_join_cpu_s`)."""
    lag = join_end.get("loop_lag_s", 0.0)
    liveness, slow = end.get("liveness_drops", 0.0), end.get("slow_consumer_closes", 0.0)
    by_lag, by_unjoined = (
        end.get("upgrades_refused_lag", 0.0),
        end.get("upgrades_refused_unjoined", 0.0),
    )
    return [
        Result("told_to_wait", told_to_wait[0], "clients",
               f"answered SERVER_BUSY at least once; {told_to_wait[1]} such answers in all"),
        Result("upgrades_refused_busy", refused_upgrades[0], "clients",
               f"upgrade answered 503 SERVER_BUSY at least once; {refused_upgrades[1]} such "
               f"answers in all; the edges counted {by_lag:.0f} for loop lag, "
               f"{by_unjoined:.0f} for sockets waiting to join"),
        Result("retries", end.get("append_retries", 0.0), "retries",
               f"room-log append attempts repeated by the edges; "
               f"{end.get('append_retries_denied', 0.0):.0f} denied by the retry budget"),
        Result("edge_liveness_drops", liveness, "sockets",
               f"dropped by the edges' liveness sweep (no close frame); {tcp_drops} clients saw "
               f"their socket end without one; {slow:.0f} slow-consumer closes"),
        Result("edge_early_closes", end.get("http_read_timeouts", 0.0)
               + end.get("refused_over_cap", 0.0), "connections",
               f"closed by the edges before a socket opened: "
               f"{end.get('http_read_timeouts', 0.0):.0f} without a whole request in time, "
               f"{end.get('refused_over_cap', 0.0):.0f} over the edge's connection cap; "
               f"{end.get('join_timeouts', 0.0):.0f} sockets closed JOIN_TIMEOUT"),
        Result("edge_counts_cpu_share", join_end.get("counts_cpu_s", 0.0)
               / max(edge_join_cpu_s, 1e-9), "1",
               f"counts rounds' CPU / the edges' CPU up to the joins' end "
               f"({join_end.get('counts_cpu_s', 0.0):.1f} of {edge_join_cpu_s:.1f} s)"),
        Result("edge_loop_lag_max_s", lag, "s",
               "largest delay of an edge's loop-lag probe in the 20 s before the joins ended"),
    ]  # fmt: skip


__all__ = ["EDGE_COUNTERS", "EDGE_LABELLED", "edge_counters", "overload_figures"]
