"""Join storm: speakers, then a crowd of viewers, join one room through real edges.

`stagecast bench storm --speakers 5 --viewers 10000` starts a private nats-server, a
statekeeper and `--edges` edges as processes (`stagecast.up.Stack`), and `--client-procs`
client processes (`stagecast.bench.simclients`: raw WebSockets, no SDK). The speakers join
first (one token each), then the viewers at `--rate` joins/s with one shared audience token
(isViewer, no participantId). Figures, all from this one run:

- joins_per_s: viewers' joined replies / (last joined reply - first join sent);
  join_p50_ms / join_p99_ms: join frame sent -> joined reply, per viewer.
- participant_events_per_viewer: per viewer, the speakers in its joined snapshot plus the
  participant_joined/left/updated frames it received (what it learns about participants),
  averaged; it must equal --speakers (participant_frames_per_viewer: the frames alone).
- count_events_per_viewer_per_s: per viewer, counts frames / (its join -> end of
  measurement), averaged.
- count_lag_p99_ms: per client, the storm's end (last joined reply) -> the time it holds a
  count equal to the room's final total (0 when its own join reply already had it); clients
  still wrong when `--count-wait` runs out are `count_never_exact`.
- edge_rss_mb / statekeeper_rss_mb: max RSS seen (sampled every 0.25 s; edges summed);
  edge_cpu_s / statekeeper_cpu_s: CPU seconds used during the viewers' storm.

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
import random
import resource
import secrets
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from rich.console import Console

from access.tokens import generate_token
from schemas.models import Grant
from stagecast.bench import Result, percentile
from stagecast.bench.simclients import ClientProcs, Msg, ProcResults, Wave
from stagecast.server_api import RoomService
from stagecast.up import Stack, UpConfig

API_KEY = "storm"
SPEAKER = Grant(can_publish=True, can_subscribe=True, can_publish_data=True)
AUDIENCE = Grant(can_publish=False, can_subscribe=True, can_publish_data=False)
_SPARE_FDS = 512
_SAMPLE_S = 0.25
console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="joins/s (default 2000)")
    parser.add_argument("--edges", type=int, default=1)
    parser.add_argument("--client-procs", type=int, default=1, help="client processes")
    parser.add_argument("--naive", action="store_true", help="also run the all-speaker storm")
    parser.add_argument("--naive-viewers", type=int, default=None, help="min(viewers, 1000)")
    parser.add_argument("--join-timeout", type=float, default=30.0, help="s, per wave's tail")
    parser.add_argument("--count-wait", type=float, default=30.0, help="s for the final count")
    parser.add_argument("--time-limit", type=float, default=600.0, help="s for the storms")
    parser.add_argument("--data-dir", default=None, help="keep logs here (default: temp dir)")


# --------------------------------------------------------------------------- machine limits


def raise_nofile(per_process: int) -> int:
    """Raise RLIMIT_NOFILE to its hard limit (children inherit it); stop if still too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < per_process + _SPARE_FDS:
        raise SystemExit(
            f"RLIMIT_NOFILE hard limit is {hard}: one edge or client process here needs about "
            f"{per_process + _SPARE_FDS} descriptors. Raise the hard limit (ulimit -Hn, "
            "limits.conf, systemd LimitNOFILE) or spread the sockets with more --edges and "
            "--client-procs."
        )
    return hard


def source_hosts(per_edge: int) -> list[str]:
    """Loopback source addresses, so no (source, edge) pair runs out of ephemeral ports."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    usable = int((high - low + 1) * 0.8)
    return [f"127.0.0.{k + 1}" for k in range(min(250, math.ceil(per_edge / usable)))]


def free_port_block(count: int) -> int:
    """A first port such that `count` consecutive ports (below the ephemeral range) are free."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1")


@contextlib.contextmanager
def data_dir(path: str | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="stagecast-storm-") as tmp:
        yield Path(tmp)


class Monitor:
    """Samples the services' and clients' RSS and CPU; raises `stop` when the run must end."""

    def __init__(self, stack: Stack, clients: ClientProcs, data_dir: Path) -> None:
        def proc(pid: int | None) -> list[psutil.Process]:
            return [psutil.Process(pid)] if pid is not None else []

        self.stack = stack
        self.data_dir = data_dir
        self.roles: dict[str, list[psutil.Process]] = {
            "edge": [psutil.Process(c.pid) for c in stack.children[1:]],
            "statekeeper": proc(stack.children[0].pid),
            "nats": proc(stack.nats.pid if stack.nats else None),
            "clients": [psutil.Process(p.pid) for p in clients.procs if p.pid is not None],
        }
        self.rss_mb = dict.fromkeys(self.roles, 0.0)
        self.busy = dict.fromkeys(self.roles, 0.0)
        """CPU use over the last sample, in cores."""
        self.stop = asyncio.Event()
        self.reason = ""

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far, per role."""
        out = dict.fromkeys(self.roles, 0.0)
        for role, procs in self.roles.items():
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    out[role] += times.user + times.system
        return out

    def reset(self) -> None:
        self.rss_mb = dict.fromkeys(self.roles, 0.0)

    def halt(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            console.print(f"[red]stopping the storm:[/] {reason}")
            self.stop.set()

    async def run(self) -> None:
        before, at = self.cpu(), time.monotonic()
        while True:
            await asyncio.sleep(_SAMPLE_S)
            for role, procs in self.roles.items():
                rss = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                self.rss_mb[role] = max(self.rss_mb[role], rss / 2**20)
            now, now_at = self.cpu(), time.monotonic()
            self.busy = {r: (now[r] - before[r]) / (now_at - at) for r in now}
            before, at = now, now_at
            for i, child in enumerate(self.stack.children):
                if child.poll() is not None:
                    log = "statekeeper.log" if i == 0 else f"edge-{i - 1}.log"
                    tail = ""
                    with contextlib.suppress(OSError):
                        tail = (self.data_dir / log).read_text(errors="replace")[-600:]
                    self.halt(f"{log[:-4]} exited with {child.returncode}: ...{tail}")
            memory = psutil.virtual_memory()
            if memory.available < min(2**30, memory.total * 0.05):
                self.halt(f"memory: only {memory.available / 2**20:.0f} MiB left")


# --------------------------------------------------------------------------- one storm


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    room_id: str
    speakers: int
    viewers: int
    naive: bool = False  # everyone holds a speaker token (isViewer false)


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one storm measured: the client processes' results and the services' use."""

    plan: Plan
    procs: list[ProcResults] = dataclasses.field(default_factory=list)
    final_total: int = 0
    cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_window_s: float = 0.0  # the viewers' wave, from its start until every join settled
    rss_mb: dict[str, float] = dataclasses.field(default_factory=dict)
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

    async def run(self, plan: Plan) -> Outcome:
        """Speakers, then the crowd; wait for the final count; collect; close every socket."""
        out, stop = Outcome(plan), self.monitor.stop
        kind = "naive" if plan.naive else "tiered"
        console.print(f"[bold]{kind} storm[/]: {plan.speakers} speakers, {plan.viewers} viewers")
        self.clients.send_all("begin")
        speakers = tuple(self._token(plan, f"speaker-{i}", False) for i in range(plan.speakers))
        joined = 0
        if plan.speakers and not stop.is_set():
            joined += (await self._wave("speakers", speakers, plan.speakers))[1]
        self.monitor.reset()
        cpu0, t0 = self.monitor.cpu(), time.monotonic()
        crowd = (self._token(plan, None, not plan.naive),)
        storm_end, viewers = (
            (0.0, 0) if stop.is_set() else await self._wave("viewers", crowd, plan.viewers)
        )
        cpu1, out.cpu_window_s = self.monitor.cpu(), time.monotonic() - t0
        out.cpu_s = {role: cpu1[role] - cpu0[role] for role in cpu0}
        if not stop.is_set():
            out.final_total = await self._room_total(plan.room_id, joined + viewers)
            console.print(f"  joins done; waiting for every client to hold {out.final_total}")
            self.clients.send_all("final", out.final_total, storm_end)
            until = min(self.deadline, time.monotonic() + self.args.count_wait)
            await self.clients.collect("exact", until, stop)
        self.clients.send_all("finish", time.monotonic(), 10.0)
        got = await self.clients.collect("results", time.monotonic() + 60.0)
        out.procs = [m[1] for m in got.values()]
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
    window = max(out.cpu_window_s, 1e-3)
    use = {r: f"{v / window:.0%} of a core over {window:.1f} s" for r, v in out.cpu_s.items()}
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
        rows.append((f"{name}_cpu_s", out.cpu_s.get(role, 0.0), "s", use[role]))
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
    if min(args.viewers, args.edges, args.client_procs) < 1 or args.speakers < 0 or args.rate <= 0:
        raise SystemExit("need --viewers/--edges/--client-procs >= 1, --speakers >= 0, --rate > 0")
    naive_viewers = min(args.viewers, 1000) if args.naive_viewers is None else args.naive_viewers
    clients = args.speakers + max(args.viewers, naive_viewers if args.naive else 0)
    limit = raise_nofile(math.ceil(clients / min(args.edges, args.client_procs)))
    hosts = source_hosts(math.ceil(clients / args.edges))
    console.print(f"RLIMIT_NOFILE {limit}; {len(hosts)} source address(es) per edge")
    with data_dir(args.data_dir) as workdir:
        config = UpConfig(
            port=free_port_block(args.edges), data_dir=workdir, edges=args.edges,
            api_key=API_KEY, api_secret=secrets.token_urlsafe(32), dev=False,
        )  # fmt: skip
        stack = Stack(config)
        procs: ClientProcs | None = None
        sampler: asyncio.Task[None] | None = None
        try:
            console.print(f"starting nats-server, a statekeeper and {args.edges} edge(s)")
            await asyncio.wait_for(stack.start(log=lambda line: None), 120.0)
            edges = [u.replace("http://", "ws://") + "/rtc" for u in stack.edge_urls]
            procs = ClientProcs(args.client_procs, edges, hosts)
            monitor = Monitor(stack, procs, workdir)
            sampler = asyncio.create_task(monitor.run())
            storms = Storms(args, stack, procs, monitor)
            tiered = await storms.run(Plan("storm-tiered", args.speakers, args.viewers))
            results = tiered_figures(tiered)
            if args.naive and not monitor.stop.is_set():
                naive = await storms.run(Plan("storm-naive", args.speakers, naive_viewers, True))
                if naive_viewers != args.viewers and not monitor.stop.is_set():
                    small = Plan("storm-tiered-small", args.speakers, naive_viewers)
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
