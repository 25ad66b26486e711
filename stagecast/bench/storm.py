"""Join storm: speakers, then a crowd of viewers, join one room through real edges.

`stagecast bench storm --speakers 5 --viewers 10000` starts a private nats-server, a
statekeeper and `--edges` edges as processes (`stagecast.up.Stack`), and `--client-procs`
client processes (`stagecast.bench.simclients`: raw WebSockets, no SDK); both default to as
few as the descriptor hard limit allows (`stagecast.bench.stormhost.plan_processes`). The
speakers join first (one token each), then the viewers at `--rate` joins/s with one shared
audience token (isViewer, no participantId). Then, with the room held: an idle phase and a
counts phase of `--phase-s` each (the count moved by a few joins and leaves), which give
the costs per unit (`unit_costs`). Figures, all from this one run (docs/benchmarks.md,
"storm", defines each):

- joins_per_s, join_p50_ms / join_p99_ms, connect_join_p99_ms, offered_joins_per_s.
- participant_events_per_viewer (must equal --speakers), participant_frames_per_viewer.
- count_events_per_viewer_per_s, count_lag_p99_ms, count_never_exact.
- join_failures, dropped_after_join (closed after joining, before the bench closed it).
- *_rss_mb (max), *_cpu_s (over the join phase), other_load_cores.
- edge/statekeeper/client_cpu_us_per_join, edge/statekeeper_kib_per_viewer,
  edge_idle_us_per_viewer_s, count_us_per_socket_frame, client_cpu_us_per_frame, and the
  join costs net of the counts frames delivered meanwhile.

`--naive` then runs the same storm in another room where everyone holds a speaker token, so
every join goes to every participant (`--naive-viewers`, default min(viewers, 1000): it is
O(N^2)), and a tiered storm of the same size when that differs from `--viewers`:
naive_participant_messages and naive_message_ratio (naive / tiered participant events).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import math
import secrets
import statistics
import time

import httpx

from access.tokens import generate_token
from edge.metrics import sample_value
from schemas.models import Grant
from stagecast.bench import Result, percentile
from stagecast.bench.clientprocs import ClientProcs, Msg
from stagecast.bench.simclients import Churn, ProcResults, Wave
from stagecast.bench.stormhost import (
    MACHINE,
    Monitor,
    console,
    data_dir,
    free_port_block,
    plan_processes,
    raise_nofile,
    source_hosts,
)
from stagecast.bench.stormload import edge_counters, overload_figures
from stagecast.server_api import RoomService
from stagecast.up import Stack, UpConfig

API_KEY = "storm"
SPEAKER = Grant(can_publish=True, can_subscribe=True, can_publish_data=True)
AUDIENCE = Grant(can_publish=False, can_subscribe=True, can_publish_data=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="joins/s (default 2000)")
    parser.add_argument(
        "--edges", type=int, default=0, help="edge processes (default 0: from the fd limit)"
    )
    parser.add_argument(
        "--client-procs", type=int, default=0, help="client processes (0: from the fd limit)"
    )
    parser.add_argument("--naive", action="store_true", help="also run the all-speaker storm")
    parser.add_argument("--naive-viewers", type=int, default=None, help="min(viewers, 1000)")
    parser.add_argument("--join-timeout", type=float, default=30.0, help="s, per wave's tail")
    parser.add_argument("--count-wait", type=float, default=30.0, help="s for the final count")
    parser.add_argument(
        "--phase-s", type=float, default=5.0, help="s of the idle and counts phases (0: none)"
    )
    parser.add_argument(
        "--churn-rate", type=float, default=8.0, help="joins+leaves/s in the counts phase"
    )
    parser.add_argument(
        "--client-loop", choices=("asyncio", "uvloop"), default="uvloop",
        help="the client processes' event loop (default uvloop)",
    )  # fmt: skip
    parser.add_argument("--time-limit", type=float, default=600.0, help="s for the storms")
    parser.add_argument("--data-dir", default=None, help="keep logs here (default: temp dir)")


# --------------------------------------------------------------------------- one storm


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    room_id: str
    speakers: int
    viewers: int
    naive: bool = False  # everyone holds a speaker token (isViewer false)
    phases: bool = True  # the idle and counts phases after the joins (never when naive)


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    """What the processes had used at one moment: the clock, CPU, counts frames."""

    at: float
    cpu_s: dict[str, float]
    edge_counts: int  # counts frames the edges queued to sockets, by their /metrics
    client_counts: int  # counts frames the clients received


@dataclasses.dataclass(frozen=True, slots=True)
class Phase:
    """The difference between two marks; `churn_ops` joins and leaves happened in it."""

    seconds: float
    cpu_s: dict[str, float]
    edge_counts: int
    client_counts: int
    churn_ops: int = 0

    @classmethod
    def between(cls, start: Mark, end: Mark, churn_ops: int = 0) -> Phase:
        cpu = {role: end.cpu_s[role] - start.cpu_s.get(role, 0.0) for role in end.cpu_s}
        return cls(
            end.at - start.at, cpu, end.edge_counts - start.edge_counts,
            end.client_counts - start.client_counts, churn_ops,
        )  # fmt: skip

    def rate(self, role: str) -> float:
        """CPU seconds per second of `role` over the phase."""
        return self.cpu_s.get(role, 0.0) / self.seconds if self.seconds > 0 else 0.0

    def other_load(self) -> float:
        """Cores busy with processes that are not the storm's services or clients."""
        ours = sum(v for role, v in self.cpu_s.items() if role != MACHINE)
        return max(0.0, self.rate(MACHINE) - ours / self.seconds) if self.seconds > 0 else 0.0


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one storm measured: the client processes' results and the services' use."""

    plan: Plan
    procs: list[ProcResults] = dataclasses.field(default_factory=list)
    final_total: int = 0
    viewers_joined: int = 0
    join: Phase | None = None  # the viewers' wave, from its start until every join settled
    idle: Phase | None = None  # the room held, nothing changing
    counts: Phase | None = None  # the room held, its count moving (churn)
    rss_before: dict[str, float] = dataclasses.field(default_factory=dict)  # bytes
    rss_held: dict[str, float] = dataclasses.field(default_factory=dict)  # end of idle
    rss_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    edges_join_end: dict[str, float] = dataclasses.field(default_factory=dict)  # stormload
    edges_end: dict[str, float] = dataclasses.field(default_factory=dict)
    stopped: str = ""

    def merged(self, field: str) -> list[float]:
        return [x for r in self.procs for x in getattr(r, field)]

    def sum(self, field: str) -> float:
        return sum(float(getattr(r, field)) for r in self.procs)

    def reasons(self, field: str) -> str:
        counts: collections.Counter[str] = collections.Counter()
        for r in self.procs:
            counts.update(getattr(r, field))
        return ", ".join(f"{k}: {n}" for k, n in counts.most_common())[:200]

    @property
    def storm_s(self) -> float:
        """First viewer's connect started -> last viewer's joined reply."""
        first = min(self.merged("started"), default=0.0)
        return max(0.0, max((r.last_joined for r in self.procs), default=0.0) - first)


class Storms:
    """Runs storms (`run`) on one stack with one set of client processes."""

    def __init__(
        self, args: argparse.Namespace, stack: Stack, clients: ClientProcs, monitor: Monitor
    ) -> None:
        self.args, self.stack, self.clients, self.monitor = args, stack, clients, monitor
        self.deadline = time.monotonic() + args.time_limit

    def _token(self, plan: Plan, participant_id: str | None, viewer: bool) -> str:
        key, secret = self.stack.config.api_key, self.stack.config.api_secret
        grant, ttl = AUDIENCE if viewer else SPEAKER, int(self.args.time_limit) + 3600
        return generate_token(
            key, secret, plan.room_id, participant_id, is_viewer=viewer, grant=grant, ttl=ttl
        )

    async def _wave(self, name: str, tokens: tuple[str, ...], count: int) -> tuple[float, int]:
        """Run a wave on every client process: the time of its last joined reply, and joins."""
        audience = name == "viewers"
        wave = Wave(name, tokens, count, self.args.rate, time.monotonic() + 0.3, audience)
        self.clients.send_all("wave", wave, self.args.join_timeout)
        shown = [time.monotonic()]

        def progress(latest: dict[int, Msg]) -> None:
            if time.monotonic() - shown[0] >= 2.0:
                shown[0] = time.monotonic()
                joined, failed = (
                    sum(m[k] for m in latest.values() if m[1] == name) for k in (2, 3)
                )
                busy = " ".join(f"{r} {v:.0%}" for r, v in self.monitor.busy.items())
                console.print(f"  {name}: {joined}/{count} joined, {failed} failed; cpu {busy}")

        got = await self.clients.collect("wave_done", self.deadline, self.monitor.stop, progress)
        if len(got) < len(self.clients.links) and not self.monitor.stop.is_set():
            self.monitor.halt(f"the time limit ({self.args.time_limit:.0f} s) in the {name} wave")
        done = [m[1] for m in got.values()]
        return max((d["last_joined"] for d in done), default=0.0), sum(d["joined"] for d in done)

    async def _room_total(self, room_id: str, fallback: int) -> int:
        """The room's total once it holds still for a second (withdrawn joins land late)."""
        cfg, seen, since = self.stack.config, fallback, time.monotonic()
        deadline = min(self.deadline, since + self.args.count_wait)
        try:
            async with RoomService(self.stack.edge_urls[0], cfg.api_key, cfg.api_secret) as api:
                while time.monotonic() < deadline and time.monotonic() - since < 1.0:
                    rooms = await asyncio.wait_for(api.list_rooms([room_id]), 15.0)
                    total = rooms[0].counts.total if rooms else fallback
                    seen, since = total, since if total == seen else time.monotonic()
                    await asyncio.sleep(0.25)
        except Exception as exc:
            console.print(f"  room total unknown ({type(exc).__name__}): using {seen}")
        return seen

    async def _edge_counts(self) -> int:
        """Counts frames the edges have queued to sockets so far (their /metrics, summed)."""
        total = 0
        async with httpx.AsyncClient(timeout=10.0) as http:
            for url in self.stack.edge_urls:
                with contextlib.suppress(httpx.HTTPError):
                    response = await http.get(f"{url}/metrics")
                    if response.status_code != 200:
                        continue  # an edge at its connection cap answers 503
                    found = sample_value(
                        response.text, "stagecast_edge_frames_out_total", type="counts"
                    )
                    total += int(found or 0)
        return total

    async def _mark(self) -> Mark:
        self.clients.send_all("tally")
        edge_counts = await self._edge_counts()
        got = await self.clients.collect("tally", time.monotonic() + 10.0)
        client_counts = sum(int(m[1]) for m in got.values())
        return Mark(time.monotonic(), self.monitor.cpu(), edge_counts, client_counts)

    async def _phases(self, plan: Plan, out: Outcome) -> None:
        """The room held: `--phase-s` idle, then as long with its count moving (churn)."""
        seconds, stop = self.args.phase_s, self.monitor.stop
        if seconds <= 0 or stop.is_set():
            return
        self.clients.send_all("hold")  # the count lag and the count rate end here
        console.print(f"  idle phase ({seconds:g} s), then counts phase ({seconds:g} s)")
        start = await self._mark()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        end = await self._mark()
        out.idle, out.rss_held = Phase.between(start, end), self.monitor.rss()
        if stop.is_set():
            return
        token = self._token(plan, None, True)
        rate = self.args.churn_rate / len(self.clients.links)
        churn = Churn(token, seconds, rate, time.monotonic() + 0.1)
        start = await self._mark()
        self.clients.send_all("churn", churn)
        got = await self.clients.collect(
            "churn_done", time.monotonic() + seconds + self.args.join_timeout, stop
        )
        end = await self._mark()
        ops = sum(int(m[1]["ops"]) for m in got.values())
        out.counts = Phase.between(start, end, ops)

    async def run(self, plan: Plan) -> Outcome:
        """Speakers, then the crowd; the final count; the idle and counts phases; close."""
        out, stop = Outcome(plan), self.monitor.stop
        kind = "naive" if plan.naive else "tiered"
        console.print(f"[bold]{kind} storm[/]: {plan.speakers} speakers, {plan.viewers} viewers")
        self.clients.send_all("begin")
        speakers = tuple(self._token(plan, f"speaker-{i}", False) for i in range(plan.speakers))
        joined = 0
        if plan.speakers and not stop.is_set():
            joined += (await self._wave("speakers", speakers, plan.speakers))[1]
        self.monitor.reset()
        out.rss_before = self.monitor.rss()
        start = await self._mark()
        crowd = (self._token(plan, None, not plan.naive),)
        storm_end, viewers = (
            (0.0, 0) if stop.is_set() else await self._wave("viewers", crowd, plan.viewers)
        )
        out.join, out.viewers_joined = Phase.between(start, await self._mark()), viewers
        out.edges_join_end = await edge_counters(self.stack.edge_urls)
        if not stop.is_set():
            out.final_total = await self._room_total(plan.room_id, joined + viewers)
            console.print(f"  joins done; waiting for every client to hold {out.final_total}")
            self.clients.send_all("final", out.final_total, storm_end)
            until = min(self.deadline, time.monotonic() + self.args.count_wait)
            await self.clients.collect("exact", until, stop)
            if plan.phases and not plan.naive:
                await self._phases(plan, out)
        self.clients.send_all("finish", time.monotonic(), 10.0)
        got = await self.clients.collect("results", time.monotonic() + 60.0)
        out.procs = [m[1] for m in got.values()]
        out.edges_end = await edge_counters(self.stack.edge_urls)
        await self.clients.collect("closed", time.monotonic() + 30.0)
        out.rss_mb, out.stopped = dict(self.monitor.rss_mb), self.monitor.reason
        return out


# --------------------------------------------------------------------------- figures


def tiered_figures(out: Outcome) -> list[Result]:
    plan, joins, storm_s = out.plan, out.merged("join_ms"), out.storm_s
    seen, lags = out.merged("audience_participants"), out.merged("lags_ms")
    joined = int(out.sum("joined"))
    note = f"{joined}/{plan.speakers + plan.viewers} joined in {storm_s:.1f} s"
    if out.stopped:
        note += f"; STOPPED: {out.stopped[:150]}"
    started = out.merged("started")
    offered = len(started) / max(1e-3, max(started, default=0.0) - min(started, default=0.0))
    cpu_s = out.join.cpu_s if out.join else {}
    window = max(out.join.seconds if out.join else 0.0, 1e-3)
    use = {r: f"{v / window:.0%} of a core over {window:.1f} s" for r, v in cpu_s.items()}
    rows: list[tuple[str, float, str, str]] = [
        ("joins_per_s", len(joins) / storm_s if storm_s else 0.0, "1/s", note),
        ("join_p50_ms", percentile(joins, 50), "ms", "join sent -> joined reply"),
        ("join_p99_ms", percentile(joins, 99), "ms", ""),
        ("connect_join_p99_ms", percentile(out.merged("connect_join_ms"), 99), "ms",
         "TCP connect started -> joined reply"),
        ("offered_joins_per_s", offered, "1/s", "viewers' connects started per second"),
        ("participant_events_per_viewer", statistics.fmean(seen) if seen else 0.0, "1",
         f"snapshot + frames; min {min(seen, default=0)}, max {max(seen, default=0)}"),
        ("participant_frames_per_viewer",
         out.sum("audience_participant_frames") / max(1, len(seen)), "1", "frames alone"),
        ("count_events_per_viewer_per_s",
         out.sum("audience_count_frames") / max(out.sum("audience_seconds"), 1e-3), "1/s",
         "counts frames / viewer-seconds in the room"),
        ("count_lag_p99_ms", percentile(lags, 99), "ms",
         f"{len(lags)} clients reached {out.final_total}; p50 {percentile(lags, 50):.0f} ms"),
        ("count_never_exact", out.sum("never_exact"), "clients", ""),
        ("join_failures", len(out.merged("started")) + plan.speakers - joined, "clients",
         out.reasons("failures")),
        ("dropped_after_join", sum(sum(r.drops.values()) for r in out.procs), "clients",
         out.reasons("drops")),
        ("edge_rss_mb", out.rss_mb.get("edge", 0.0), "MiB", "max, summed over edges"),
        ("statekeeper_rss_mb", out.rss_mb.get("statekeeper", 0.0), "MiB", "max"),
        ("client_rss_mb", out.rss_mb.get("clients", 0.0), "MiB", "max, summed"),
    ]  # fmt: skip
    for role, name in (("edge", "edge"), ("statekeeper", "statekeeper"), ("nats", "nats"),
                       ("clients", "client")):  # fmt: skip
        rows.append((f"{name}_cpu_s", cpu_s.get(role, 0.0), "s", use.get(role, "")))
    tcp = sum(n for r in out.procs for why, n in r.drops.items() if why.startswith("tcp"))
    waited = int(out.sum("told_to_wait")), int(out.sum("busy_answers"))
    refused = int(out.sum("refused_upgrades")), int(out.sum("upgrade_refusals"))
    overload = overload_figures(
        waited, refused, tcp, out.edges_end, out.edges_join_end, cpu_s.get("edge", 0.0)
    )
    return [Result(*row) for row in rows] + overload + unit_costs(out)


def unit_costs(out: Outcome) -> list[Result]:
    """Costs per join, per held viewer and per counts frame (see docs/benchmarks.md)."""
    join, idle, counts, joins = out.join, out.idle, out.counts, out.viewers_joined
    if join is None or joins < 1:
        return []
    us = 1e6

    def per_join(role: str) -> float:
        return join.cpu_s.get(role, 0.0) / joins * us

    def kib_per_viewer(role: str) -> float:
        if not out.rss_held:
            return 0.0
        return (out.rss_held[role] - out.rss_before.get(role, 0.0)) / joins / 1024

    others = [f"{p.other_load():.2f}" for p in (idle, counts) if p is not None]
    rows = [
        (
            "other_load_cores",
            join.other_load(),
            "cores",
            f"CPU of unrelated processes over the join phase; idle, counts: {', '.join(others)}",
        ),
        ("edge_cpu_us_per_join", per_join("edge"), "us", "edge CPU over the join phase / joins"),
        ("statekeeper_cpu_us_per_join", per_join("statekeeper"), "us", ""),
        ("client_cpu_us_per_join", per_join("clients"), "us", "the simulator's own cost"),
    ]
    if idle is not None:
        rows += [
            ("edge_kib_per_viewer", kib_per_viewer("edge"), "KiB", "RSS growth, idle room held"),
            ("statekeeper_kib_per_viewer", kib_per_viewer("statekeeper"), "KiB", ""),
            ("edge_idle_us_per_viewer_s", idle.rate("edge") / joins * us, "us",
             "edges' CPU per second of the idle phase / viewers held (pings, heartbeats)"),
        ]  # fmt: skip
    if idle is not None and counts is not None and counts.client_counts:

        def extra(role: str) -> float:
            """CPU seconds of `role` in the counts phase beyond its idle baseline."""
            return counts.cpu_s.get(role, 0.0) - idle.rate(role) * counts.seconds

        # Frames delivered are those the clients read: the edges' /metrics count a frame
        # when it is queued, also when a newer one replaces it in the socket's slot.
        frames = counts.client_counts
        drops = sum(sum(r.drops.values()) for r in out.procs)
        disturbed = f"; UNRELIABLE: {drops} sockets dropped, the room was not held" if drops else ""
        churn = counts.churn_ops * per_join("edge") / us  # the churn's own joins and leaves
        edge_frame = (extra("edge") - churn) / frames * us
        client_frame = extra("clients") / frames * us
        net = {
            role: (join.cpu_s.get(role, 0.0) - join.client_counts * cost / us) / joins * us
            for role, cost in (("edge", edge_frame), ("clients", client_frame))
        }
        rows += [
            ("counts_phase_frames", frames, "frames",
             f"counts frames the clients read in {counts.seconds:.1f} s"),
            ("counts_phase_frames_queued", counts.edge_counts, "frames",
             "counts frames the edges queued (/metrics; replaced ones too)"),
            ("count_us_per_socket_frame", edge_frame, "us",
             f"edges' CPU beyond idle ({idle.rate('edge'):.0%} of a core) / frames; "
             f"{counts.churn_ops} churn joins+leaves{disturbed}"),
            ("client_cpu_us_per_frame", client_frame, "us", "the simulator's cost per frame"),
            ("edge_cpu_us_per_join_net", net["edge"], "us",
             f"less {join.client_counts} counts frames delivered during the join phase"),
            ("client_cpu_us_per_join_net", net["clients"], "us", "likewise"),
        ]  # fmt: skip
    return [Result(*row) for row in rows]


def naive_figures(naive: Outcome, tiered: Outcome) -> list[Result]:
    messages, baseline = naive.sum("participants_total"), tiered.sum("participants_total")
    return [
        Result("naive_participant_messages", messages, "events",
               f"{naive.sum('joined'):.0f} clients, all speakers; tiered: {baseline:.0f}"),
        Result("naive_message_ratio", messages / baseline if baseline else 0.0, "x",
               f"naive / tiered participant events, {naive.plan.viewers} viewers each"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- the suite


async def run(args: argparse.Namespace) -> list[Result]:
    if min(args.viewers, args.edges + 1, args.client_procs + 1) < 1 or args.speakers < 0:
        raise SystemExit("need --viewers >= 1, --edges/--client-procs >= 0, --speakers >= 0")
    if args.rate <= 0 or args.churn_rate <= 0:
        raise SystemExit("need --rate > 0 and --churn-rate > 0")
    naive_viewers = min(args.viewers, 1000) if args.naive_viewers is None else args.naive_viewers
    clients = args.speakers + max(args.viewers, naive_viewers if args.naive else 0)
    clients += math.ceil(args.phase_s * args.churn_rate)  # the churners of the counts phase
    edges, client_procs = plan_processes(clients, args.edges, args.client_procs)
    limit = raise_nofile(math.ceil(clients / min(edges, client_procs)))
    hosts = source_hosts(math.ceil(clients / edges))
    console.print(
        f"RLIMIT_NOFILE {limit}: {edges} edge(s), {client_procs} client process(es); "
        f"{len(hosts)} source address(es) per edge"
    )
    with data_dir(args.data_dir) as workdir:
        config = UpConfig(
            port=free_port_block(edges), data_dir=workdir, edges=edges, forwarders=0,
            api_key=API_KEY, api_secret=secrets.token_urlsafe(32), dev=False,
        )  # fmt: skip
        stack = Stack(config)
        procs: ClientProcs | None = None
        sampler: asyncio.Task[None] | None = None
        try:
            console.print(f"starting nats-server, a statekeeper and {edges} edge(s)")
            await asyncio.wait_for(stack.start(log=lambda line: None), 120.0)
            urls = [u.replace("http://", "ws://") + "/rtc" for u in stack.edge_urls]
            procs = ClientProcs(client_procs, urls, hosts, args.client_loop)
            monitor = Monitor(stack, procs, workdir)
            sampler = asyncio.create_task(monitor.run())
            storms = Storms(args, stack, procs, monitor)
            tiered = await storms.run(Plan("storm-tiered", args.speakers, args.viewers))
            results = tiered_figures(tiered)
            if args.naive and not monitor.stop.is_set():
                naive = await storms.run(Plan("storm-naive", args.speakers, naive_viewers, True))
                if naive_viewers != args.viewers and not monitor.stop.is_set():
                    small = Plan("storm-tiered-small", args.speakers, naive_viewers, phases=False)
                    tiered = await storms.run(small)
                results += naive_figures(naive, tiered)
            return results
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            if procs is not None:
                await procs.close()
            console.print("stopping the stack")
            await stack.stop()


__all__ = ["Outcome", "Phase", "Plan", "Storms", "add_arguments", "free_port_block", "run"]
