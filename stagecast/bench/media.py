"""Media forwarding: CPU per packet, packets/s per core and added latency of one forwarder.

`stagecast bench media --subscribers 1,10,50,100 --kinds video,audio` fans one publisher
out to N subscribers through ONE forwarder, for each N and kind (`video`: VP8 at ~300
packets/s, a synthetic moving pattern; `audio`: Opus, 50 packets/s), and through the
decode/re-encode baseline (aiortc's `MediaRelay`, a real encoder per subscriber) for
N <= `--relay-max`, since the relay cannot keep up beyond a few subscribers on a small
machine. Every case starts fresh processes: the forwarder (`stagecast.bench.mediaforwarder`, at nice
`--forwarder-nice`), the publisher and `--subscriber-procs` subscriber processes
(`stagecast.bench.mediaclients`, at nice 10), so the forwarder's CPU is measured alone and
is not preempted by its clients. `--pace` makes the publisher spread each frame's packets
as a browser does. Figures per case, each the median over `--runs`:

- us_per_packet: the forwarder process's CPU time (user + system, getrusage) over the
  `--seconds` window / RTP packets it sent in it (one packet to 10 legs counts 10);
  packets_per_core_s = 1e6 / us_per_packet.
- latency_p50_ms / latency_p99_ms: per packet and leg, from the publisher's socket write
  (stamped in the publisher process) to the leg's socket write after SRTP (stamped in
  the forwarder); so it includes the loopback hop and the time a packet waits in the
  forwarder's socket while earlier packets fan out. router_p99_ms: the part inside the
  forwarder, from the router's `forward` entry to the leg's write.
- Where the latency comes from (forwarder only): a publisher's frame leaves as one burst
  (its packets share an RTP timestamp), so the figures are also given against the burst:
  burst_packets_p50 / _p99 / _max (packets per frame), keyframes (in the window),
  latency_p99_ms_keyframe / _delta (pairs of keyframe bursts / of the others) and
  _large_burst (bursts larger than the window's p90 frame). Each pair's latency splits
  into four parts, from the forwarder's socket read of the packet (`reads`) and the
  router's entry and exit: *queue*, the time between the publisher's write and the
  forwarder's read during which the forwarder was receiving or fanning out earlier
  packets; *loop*, the rest of that time (the loopback hop, the event loop's other work,
  preemption); *receive*, read -> router entry (aiortc's receive path: SRTP, RTP parse,
  statistics, REMB, NACK tracking); *fanout*, router entry -> the leg's write (the legs
  before it). tail_*_ms: each part's mean over the pairs at or above the p99, mean_*_ms
  over all pairs; receive_us_p50 and service_us_p50 (read -> router done), per packet.
- delivered_ratio: packets the subscribers received / packets the forwarder sent.
- helper_leg_share: the share of the legs sent that the C fan-out's helper thread sent
  (0 with `STAGECAST_FANOUT_THREADS=1`, on one core, or below 32 legs; it takes legs only
  while it gets a core).
- client_cores / other_load_cores: CPU used during the window by the case's clients, and
  by unrelated processes (a busy machine makes the latency figures meaningless).
- transcode_cpu_ratio: the relay's CPU per packet sent / the forwarder's, same N and kind.
- simulcast_switch_ms_p50 / _p99: a subscriber's layer request to its first packet of the
  new layer, `--switches` times (`stagecast.bench.simulcast`).

The headline figures (last lines) are for video at the largest N (`transcode_cpu_ratio`:
video at the largest N the relay ran).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
from rich.console import Console

from stagecast.bench import Result, median, percentile
from stagecast.bench.mediaclients import VIDEO_BITRATE, publisher_process, subscribers_process
from stagecast.bench.mediaforwarder import (
    PACKET_FIELDS,
    LatencyStamps,
    Window,
    forwarder_process,
)
from stagecast.bench.simulcast import simulcast_figures
from stagecast.bench.workers import Worker

KINDS = ("video", "audio")
SETUP_LIMIT = 300.0
"""Seconds a case may take to start its processes and connect every subscriber."""
BATCH = 25
"""Subscribers negotiated per round trip."""
CONNECT_LIMIT = 120.0

console = Console(stderr=True)


def _counts(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(KINDS)}")
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options."""
    parser.add_argument("--subscribers", type=_counts, default=[1, 10, 50, 100])
    parser.add_argument("--kinds", type=_kinds, default=list(KINDS))
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per case")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--runs", type=int, default=1, help="runs per case (medians)")
    parser.add_argument(
        "--relay-max", type=int, default=10, help="largest N run through the relay (0: none)"
    )
    parser.add_argument(
        "--subscriber-procs", type=int, default=2, help="processes the subscribers share"
    )
    parser.add_argument(
        "--forwarder-nice",
        type=int,
        default=-10,
        help="the measured process's nice value, so that other work on the machine does "
        "not preempt it (needs privileges; otherwise it keeps the default)",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="publisher paces RTP at this multiple of the video bitrate (0: frame bursts)",
    )
    parser.add_argument(
        "--keyframe-interval",
        type=float,
        default=0.0,
        help="the video publisher also sends a keyframe every this many s (0: on request)",
    )
    parser.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the latency stamps (to see their CPU cost, included otherwise)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="write a cProfile of each window here"
    )
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, help="start no case after this many s"
    )
    parser.add_argument(
        "--switches", type=int, default=20, help="simulcast layer switches timed (0: none)"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    mode: str
    """"forward" (the forwarder) or "relay" (the decode/re-encode baseline)."""
    kind: str
    subscribers: int

    @property
    def name(self) -> str:
        return f"{self.mode}_{self.kind}_n{self.subscribers}"


@dataclasses.dataclass(frozen=True, slots=True)
class CaseRun:
    """One run of a case: the forwarder's window and what the others saw of it."""

    case: Case
    window: Window
    received: int
    """RTP packets the subscribers counted over (about) the same window."""
    silent: int
    """Subscribers that received nothing in the window."""
    latency_ms: list[float]
    """Publisher write -> leg write, per packet and leg (empty for the relay)."""
    router_ms: list[float]
    """Router entry -> leg write, per packet and leg."""
    unmatched: int
    """Leg sends whose packet had no publisher stamp."""
    breakdown: Breakdown | None
    """Where the latency came from, against the bursts (None: no latency stamps)."""
    client_cores: float
    """CPU used meanwhile by the publisher, the subscribers and the suite, in cores."""
    other_cores: float
    """CPU used meanwhile by processes outside the case, in cores (a noisy machine)."""

    @property
    def us_per_packet(self) -> float:
        return 1e6 * self.window.cpu_s / max(1, self.window.packets_out)


def cases(args: argparse.Namespace) -> list[Case]:
    """The cases of one run, in order: per kind and N, the forwarder then the relay."""
    found: list[Case] = []
    for kind in args.kinds:
        for n in args.subscribers:
            found.append(Case("forward", kind, n))
            if n <= args.relay_max:
                found.append(Case("relay", kind, n))
    return found


async def run(args: argparse.Namespace) -> list[Result]:
    """Every case `--runs` times (runs outermost, to spread a noisy machine's effects)."""
    started = time.monotonic()
    done: dict[Case, list[CaseRun]] = {}
    skipped = 0
    for run_index in range(args.runs):
        for case in cases(args):
            if time.monotonic() - started > args.time_limit:
                skipped += 1
                continue
            result = await run_case(case, args, run_index)
            done.setdefault(case, []).append(result)
            console.print(f"run {run_index + 1}: {summary(result)}")
    if skipped:
        console.print(f"[yellow]{skipped} case runs skipped[/]: --time-limit reached")
    return figures(done, args, extra=await simulcast_figures(args.switches))


async def run_case(case: Case, args: argparse.Namespace, run_index: int) -> CaseRun:
    """Start the processes of one case, connect everyone, warm up, measure, clean up."""
    lifetime = SETUP_LIMIT + args.warmup + args.seconds + 60
    latency = case.mode == "forward" and not args.no_latency
    ids = [f"sub{i}" for i in range(case.subscribers)]
    procs = max(1, min(args.subscriber_procs, case.subscribers))
    groups = [ids[i::procs] for i in range(procs)]
    workers: list[Worker] = []
    try:
        node = (case.mode, latency, VIDEO_BITRATE, args.forwarder_nice, lifetime)
        workers.append(Worker(f"forwarder-{case.mode}", forwarder_process, *node))
        publisher_args = (case.kind, args.pace, lifetime, args.keyframe_interval)
        workers.append(Worker("publisher", publisher_process, *publisher_args))
        for i in range(procs):
            workers.append(Worker(f"subscribers-{i}", subscribers_process, lifetime))
        forwarder, publisher, *subscribers = workers
        offer = await publisher.call("offer", timeout=SETUP_LIMIT)
        answer, track_ids = await forwarder.call("publish", offer)
        await publisher.call("answer", answer)
        for group, worker in zip(groups, subscribers, strict=True):
            for start in range(0, len(group), BATCH):
                batch = group[start : start + BATCH]
                offers = await forwarder.call("subscribe_many", batch, track_ids)
                answers = await worker.call("answer_many", list(zip(batch, offers, strict=True)))
                await forwarder.call("answer_many", list(zip(batch, answers, strict=True)))
        await _wait_legs(forwarder, case.subscribers * len(track_ids))
        await publisher.call("keyframe")  # every video leg starts at a keyframe
        await asyncio.sleep(args.warmup)
        before = await _received(subscribers)
        load = MachineLoad([w.pid for w in workers])
        profile = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile = str(args.profile / f"{case.name}-run{run_index + 1}.prof")
        window: Window = await forwarder.call(
            "measure", args.seconds, profile, timeout=args.seconds + 60
        )
        client_cores, other_cores = load.cores()
        after = await _received(subscribers)
        stamps: LatencyStamps | None = await forwarder.call("latency")
        sent: dict[int, int] = await publisher.call("stamps")
    finally:
        await asyncio.gather(*(w.close() for w in workers))
    if stamps is not None and stamps.truncated:
        console.print(f"[yellow]{case.name}: latency stamps truncated[/] (a long window)")
    latency_ms, router_ms, unmatched = latencies(stamps, sent)
    return CaseRun(
        breakdown=breakdown(stamps, sent),
        case=case,
        window=window,
        received=sum(after.values()) - sum(before.values()),
        silent=sum(1 for s, count in after.items() if count == before.get(s, 0)),
        latency_ms=latency_ms,
        router_ms=router_ms,
        unmatched=unmatched,
        client_cores=client_cores,
        other_cores=other_cores,
    )


class MachineLoad:
    """CPU used from now on, in cores: by the case's clients, and by unrelated processes.

    `pids[0]` is the measured process; the other pids and this process are the clients.
    """

    def __init__(self, pids: list[int]) -> None:
        self._measured = psutil.Process(pids[0])
        self._clients = [psutil.Process(pid) for pid in pids[1:]] + [psutil.Process()]
        self._start = time.monotonic()
        self._busy = self._machine_busy()
        self._cpu = self._measured_cpu(), self._clients_cpu()

    def cores(self) -> tuple[float, float]:
        """(clients, others) since this was made."""
        wall = max(time.monotonic() - self._start, 1e-9)
        busy = self._machine_busy() - self._busy
        measured = self._measured_cpu() - self._cpu[0]
        clients = self._clients_cpu() - self._cpu[1]
        return clients / wall, max(0.0, busy - measured - clients) / wall

    @staticmethod
    def _machine_busy() -> float:
        # guest time is already in user; steal is CPU the hypervisor gave to others
        times = psutil.cpu_times()._asdict()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        return float(sum(times.get(field, 0.0) for field in busy))

    def _measured_cpu(self) -> float:
        times = self._measured.cpu_times()
        return float(times.user + times.system)

    def _clients_cpu(self) -> float:
        return float(sum(sum(p.cpu_times()[:2]) for p in self._clients))


async def _wait_legs(forwarder: Worker, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_LIMIT
    while (legs := await forwarder.call("legs")) < expected:
        if loop.time() > deadline:
            raise TimeoutError(f"{legs} of {expected} legs connected after {CONNECT_LIMIT} s")
        await asyncio.sleep(0.1)


async def _received(subscribers: Sequence[Worker]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker in subscribers:
        counts.update(await worker.call("counts"))
    return counts


def latencies(
    stamps: LatencyStamps | None, sent: dict[int, int]
) -> tuple[list[float], list[float], int]:
    """Per (packet, leg): publisher write -> leg write and router entry -> leg write (ms)."""
    if stamps is None:
        return [], [], 0
    packets, legs = array("q"), array("q")
    packets.frombytes(stamps.packets)
    legs.frombytes(stamps.legs)
    end_to_end: list[float] = []
    in_router: list[float] = []
    unmatched = 0
    for i in range(0, len(packets), PACKET_FIELDS):
        key, entered, first, count = packets[i : i + 4]
        published = sent.get(key)
        for t in legs[first : first + count]:
            in_router.append((t - entered) / 1e6)
            if published is None:
                unmatched += 1
            else:
                end_to_end.append((t - published) / 1e6)
    return end_to_end, in_router, unmatched


PARTS = ("queue", "loop", "receive", "fanout")
"""The parts of a (packet, leg) pair's latency, in order (see the module docstring)."""
LOOKBACK = 1000
"""Earlier packets looked at for the time a packet queued behind them."""


@dataclasses.dataclass(frozen=True, slots=True)
class Breakdown:
    """One run's (packet, leg) latencies against the publisher's bursts, and their parts."""

    burst_packets: list[int]
    """Packets per burst (frame: one RTP timestamp), over the window."""
    keyframes: int
    keyframe_ms: list[float]
    """Latency of the pairs whose packet belongs to a keyframe's burst."""
    delta_ms: list[float]
    """Latency of the other pairs."""
    large_burst_ms: list[float]
    """Latency of the pairs of bursts larger than the window's p90 burst."""
    tail_ms: dict[str, float]
    """Mean of each part (`PARTS`) over the pairs at or above the p99 latency."""
    mean_ms: dict[str, float]
    """Mean of each part over all pairs."""
    receive_us: list[float]
    """Per packet: socket read -> router entry."""
    service_us: list[float]
    """Per packet: socket read -> router done (receive and the whole fan-out)."""


def breakdown(stamps: LatencyStamps | None, sent: dict[int, int]) -> Breakdown | None:
    """Split each (packet, leg) latency into `PARTS` and group the packets by burst.

    A packet's wait between the publisher's write and the forwarder's read is *queue*
    while the forwarder was busy with earlier packets (their read -> done intervals) and
    *loop* otherwise. Packets without a read stamp count read = router entry.
    """
    if stamps is None:
        return None
    packets, legs, read_pairs = array("q"), array("q"), array("q")
    packets.frombytes(stamps.packets)
    legs.frombytes(stamps.legs)
    read_pairs.frombytes(stamps.reads)
    reads = dict(zip(read_pairs[::2], read_pairs[1::2], strict=True))
    rows = [packets[i : i + PACKET_FIELDS] for i in range(0, len(packets), PACKET_FIELDS)]
    bursts: dict[tuple[int, int], list[int]] = {}
    for index, row in enumerate(rows):
        bursts.setdefault((row[0] >> 16, row[5]), []).append(index)
    sizes = [len(members) for members in bursts.values()]
    large = percentile(sizes, 90)
    burst_of: dict[int, tuple[int, bool, bool]] = {}
    for members in bursts.values():
        keyframe = any(rows[i][6] for i in members)
        for i in members:
            burst_of[i] = (len(members), keyframe, len(members) > large)
    starts = [reads.get(row[0], row[1]) for row in rows]
    pairs: list[tuple[float, float, float, float, float]] = []
    keyframe_ms: list[float] = []
    delta_ms: list[float] = []
    large_ms: list[float] = []
    receive_us: list[float] = []
    service_us: list[float] = []
    for index, row in enumerate(rows):
        key, entered, first, count, done = row[:5]
        read = starts[index]
        receive_us.append((entered - read) / 1e3)
        service_us.append((done - read) / 1e3)
        published = sent.get(key)
        if published is None or not count:
            continue
        queue = 0
        for earlier in range(index - 1, max(-1, index - 1 - LOOKBACK), -1):
            busy_until = rows[earlier][4]
            if busy_until <= published:
                break
            queue += max(0, min(busy_until, read) - max(starts[earlier], published))
        loop = read - published - queue
        receive = entered - read
        _, keyframe, in_large = burst_of[index]
        for sent_at in legs[first : first + count]:
            total = (sent_at - published) / 1e6
            pairs.append((total, queue / 1e6, loop / 1e6, receive / 1e6, (sent_at - entered) / 1e6))
            (keyframe_ms if keyframe else delta_ms).append(total)
            if in_large:
                large_ms.append(total)
    threshold = percentile([p[0] for p in pairs], 99)
    tail = [p for p in pairs if p[0] >= threshold]
    return Breakdown(
        burst_packets=sizes,
        keyframes=sum(1 for row in rows if row[6]),
        keyframe_ms=keyframe_ms,
        delta_ms=delta_ms,
        large_burst_ms=large_ms,
        tail_ms=_part_means(tail),
        mean_ms=_part_means(pairs),
        receive_us=receive_us,
        service_us=service_us,
    )


def _part_means(pairs: list[tuple[float, float, float, float, float]]) -> dict[str, float]:
    if not pairs:
        return dict.fromkeys(PARTS, 0.0)
    return {part: sum(p[i + 1] for p in pairs) / len(pairs) for i, part in enumerate(PARTS)}


def summary(r: CaseRun) -> str:
    w = r.window
    text = (
        f"{r.case.mode} {r.case.kind} n={r.case.subscribers}: "
        f"{r.us_per_packet:.1f} us/packet, {w.packets_out / w.wall_s:,.0f} out/s "
        f"({w.packets_in / w.wall_s:,.0f} in/s), CPU {100 * w.cpu_s / w.wall_s:.0f}%"
    )
    if r.latency_ms:
        text += (
            f", latency p50/p99 {percentile(r.latency_ms, 50):.2f}/"
            f"{percentile(r.latency_ms, 99):.2f} ms"
        )
    b = r.breakdown
    if b is not None and b.burst_packets:
        tail = "/".join(f"{b.tail_ms[part]:.2f}" for part in PARTS)
        text += (
            f", bursts p50/max {percentile(b.burst_packets, 50):.0f}/{max(b.burst_packets)}"
            f" packets, p99 tail {'/'.join(PARTS)} {tail} ms"
        )
    text += f", delivered {r.received / max(1, w.packets_out):.2f}"
    return text + f", clients {r.client_cores:.2f} cores, others {r.other_cores:.2f} cores"


def _med(runs: list[CaseRun], figure: Callable[[CaseRun], float]) -> float:
    return median([figure(r) for r in runs])


def figures(
    done: dict[Case, list[CaseRun]], args: argparse.Namespace, extra: Sequence[Result] = ()
) -> list[Result]:
    """Per-case medians, the relay ratios, `extra`, then the headline figures."""
    results = [r for case, runs in done.items() for r in case_figures(case, runs, args)]
    ratios = {
        case: _ratio(runs, done.get(Case("forward", case.kind, case.subscribers), []))
        for case, runs in done.items()
        if case.mode == "relay"
    }
    for case, ratio in ratios.items():
        if ratio is not None:
            name = f"transcode_cpu_ratio_{case.kind}_n{case.subscribers}"
            results.append(Result(name, ratio, "x", "relay us/packet / forwarder us/packet"))
    return results + list(extra) + headline(done, ratios, args)


def case_figures(case: Case, runs: list[CaseRun], args: argparse.Namespace) -> list[Result]:
    """The medians of one case over its runs."""
    name = case.name
    us = _med(runs, lambda r: r.us_per_packet)
    in_s = _med(runs, lambda r: r.window.packets_in / r.window.wall_s)
    switches = _med(runs, lambda r: r.window.involuntary_switches / r.window.wall_s)
    nice = max(r.window.niceness for r in runs)
    results = [Result(f"{name}_us_per_packet", us, "us", f"median of {len(runs)}")]
    if case.mode == "forward":
        results.append(Result(f"{name}_packets_per_core_s", 1e6 / max(us, 1e-9), "1/s"))
    results += [
        Result(
            f"{name}_cpu_percent",
            _med(runs, lambda r: 100 * r.window.cpu_s / r.window.wall_s),
            "%",
            f"of one core; nice {nice}, {switches:.0f} preemptions/s",
        ),
        Result(
            f"{name}_kernel_percent",
            _med(runs, lambda r: 100 * r.window.system_s / max(r.window.cpu_s, 1e-9)),
            "%",
            "of its CPU: system time",
        ),
        Result(
            f"{name}_helper_leg_share",
            _med(runs, lambda r: r.window.helper_legs / max(1, r.window.packets_out)),
            "x",
            "of the legs sent, by the fan-out's helper thread",
        ),
        Result(
            f"{name}_packets_out_per_s",
            _med(runs, lambda r: r.window.packets_out / r.window.wall_s),
            "1/s",
            f"{in_s:,.0f} in/s",
        ),
        Result(
            f"{name}_delivered_ratio",
            _med(runs, lambda r: r.received / max(1, r.window.packets_out)),
            "x",
            f"silent subscribers: {max(r.silent for r in runs)}",
        ),
    ]
    if case.mode == "forward" and not args.no_latency:
        unmatched = max(r.unmatched for r in runs)
        results += [
            Result(f"{name}_latency_p50_ms", _p(runs, 50), "ms", "publisher -> leg"),
            Result(f"{name}_latency_p99_ms", _p(runs, 99), "ms", f"{unmatched} unmatched"),
            Result(f"{name}_router_p99_ms", _p(runs, 99, router=True), "ms", "in-process"),
            *burst_results(name, [r.breakdown for r in runs if r.breakdown is not None]),
        ]
    return [
        *results,
        Result(
            f"{name}_client_cores",
            _med(runs, lambda r: r.client_cores),
            "cores",
            "publisher + subscribers + suite",
        ),
        Result(
            f"{name}_other_load_cores",
            _med(runs, lambda r: r.other_cores),
            "cores",
            "CPU of unrelated processes",
        ),
    ]


def burst_results(name: str, found: list[Breakdown]) -> list[Result]:
    """The latency against the bursts and its parts, medians over the runs."""
    if not found:
        return []

    def med(figure: Callable[[Breakdown], float]) -> float:
        return median([figure(b) for b in found])

    results = [
        Result(
            f"{name}_burst_packets_p50", med(lambda b: percentile(b.burst_packets, 50)), "packets"
        ),
        Result(
            f"{name}_burst_packets_p99", med(lambda b: percentile(b.burst_packets, 99)), "packets"
        ),
        Result(
            f"{name}_burst_packets_max", med(lambda b: max(b.burst_packets, default=0)), "packets"
        ),
        Result(f"{name}_keyframes", med(lambda b: b.keyframes), "keyframes", "in the window"),
        Result(
            f"{name}_latency_p99_ms_keyframe",
            med(lambda b: percentile(b.keyframe_ms, 99)),
            "ms",
            "pairs of keyframe bursts (0: none)",
        ),
        Result(f"{name}_latency_p99_ms_delta", med(lambda b: percentile(b.delta_ms, 99)), "ms"),
        Result(
            f"{name}_latency_p99_ms_large_burst",
            med(lambda b: percentile(b.large_burst_ms, 99)),
            "ms",
            "bursts above the p90 size",
        ),
    ]
    tails = [median([b.tail_ms[part] for b in found]) for part in PARTS]
    means = [median([b.mean_ms[part] for b in found]) for part in PARTS]
    results += [
        Result(f"{name}_tail_{part}_ms", value, "ms", "mean over the pairs >= p99")
        for part, value in zip(PARTS, tails, strict=True)
    ]
    results += [
        Result(f"{name}_mean_{part}_ms", value, "ms", "mean over all pairs")
        for part, value in zip(PARTS, means, strict=True)
    ]
    return [
        *results,
        Result(f"{name}_receive_us_p50", med(lambda b: percentile(b.receive_us, 50)), "us"),
        Result(f"{name}_service_us_p50", med(lambda b: percentile(b.service_us, 50)), "us"),
    ]


def _p(runs: list[CaseRun], pct: float, *, router: bool = False) -> float:
    return median([percentile(r.router_ms if router else r.latency_ms, pct) for r in runs])


def _ratio(relay: list[CaseRun], forward: list[CaseRun]) -> float | None:
    if not relay or not forward:
        return None
    forward_us = _med(forward, lambda r: r.us_per_packet)
    return _med(relay, lambda r: r.us_per_packet) / max(forward_us, 1e-9)


def headline(
    done: dict[Case, list[CaseRun]], ratios: dict[Case, float | None], args: argparse.Namespace
) -> list[Result]:
    """The suite's summary: video (else audio) at the largest N measured."""
    forward = [c for c in done if c.mode == "forward"]
    if not forward:
        return []
    kind = "video" if any(c.kind == "video" for c in forward) else "audio"
    case = max((c for c in forward if c.kind == kind), key=lambda c: c.subscribers)
    runs = done[case]
    us = _med(runs, lambda r: r.us_per_packet)
    where = f"{kind}, 1 -> {case.subscribers}"
    results = [
        Result("forward_us_per_packet", us, "us", where),
        Result("forwarded_packets_per_core_s", 1e6 / max(us, 1e-9), "1/s", where),
    ]
    if not args.no_latency:
        results += [
            Result("forward_latency_p50_ms", _p(runs, 50), "ms", where),
            Result("forward_latency_p99_ms", _p(runs, 99), "ms", where),
        ]
    measured = [(c, r) for c, r in ratios.items() if r is not None and c.kind == kind]
    if measured:
        relay, ratio = max(measured, key=lambda item: item[0].subscribers)
        results.append(
            Result("transcode_cpu_ratio", ratio, "x", f"{kind}, 1 -> {relay.subscribers}")
        )
    return results
