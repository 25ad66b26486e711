"""Decode + fold throughput of the statekeeper's pure core, on one core.

Encodes a join storm (5 speakers, N viewers, 10% churn) once, then times decoding every
event and folding it into a fresh state, several times; the figure is the median. The
baseline is msgpack decoding alone of the same bytes in the same process, so the ratio
says what the schema validation and the fold cost on top of parsing.
"""

from __future__ import annotations

import argparse
import time

import msgpack

from schemas.codec import decode, encode
from schemas.log import LogEvent
from stagecast.bench import Result, median
from stagecast.bench.workload import storm
from statekeeper.fold import apply
from statekeeper.state import State


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--viewers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)


def fold_once(frames: list[bytes]) -> float:
    state = State()
    started = time.process_time()
    for seq, frame in enumerate(frames, start=1):
        event = decode(frame)
        assert isinstance(event, LogEvent)
        apply(state, seq, event)
    return time.process_time() - started


def parse_once(frames: list[bytes]) -> float:
    started = time.process_time()
    for frame in frames:
        msgpack.unpackb(frame, raw=False)
    return time.process_time() - started


async def run(args: argparse.Namespace) -> list[Result]:
    frames = [encode(e) for e in storm("bench-room", viewers=args.viewers)]
    folds = [fold_once(frames) for _ in range(args.runs)]
    parses = [parse_once(frames) for _ in range(args.runs)]
    rate = len(frames) / median(folds)
    parse_rate = len(frames) / median(parses)
    return [
        Result("fold_events_per_s", rate, "1/s", f"{len(frames)} events, median of {args.runs}"),
        Result("fold_us_per_event", 1e6 / rate, "us"),
        Result("msgpack_only_events_per_s", parse_rate, "1/s", "baseline: parsing alone"),
        Result("fold_vs_parse_ratio", parse_rate / rate, "x", "cost of validation + fold"),
    ]
