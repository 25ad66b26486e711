"""The forwarder's per-leg fan-out in C (`rtc/_fanout.c`), when it was built.

At 100 subscribers the forwarder's CPU is the work each leg does for each packet
(docs/benchmarks.md, media): write the leg's RTP header, keep the bytes for NACKs, SRTP,
`sendto`. In Python that costs ~14 µs per leg and packet; the C loop does it with one
call per packet for all of a track's legs, and the system calls without the GIL.

The extension is optional at install time (a machine without a C compiler still installs
the package): without it, or with ``STAGECAST_FANOUT_C=0`` in the environment, `new_leg`
returns None, every leg takes the Python path, and the first leg made says so in the log
once. tests/test_fanout_c.py asserts the extension is built where the tests run.

The router's per-leg loop (each leg's sequence number, then its send) runs in C too:
`new_rewriter` is `rtc.packets.SequenceRewriter` in C when the fan-out is on, and
`forward` rewrites and sends a packet on a list of legs in one call.

A `FastLeg` is made per outbound stream (`rtc.aiortc_adapter.OutboundStream.fast`),
configured with the leg's header layout once negotiated, and bound to its route whenever
the Python path opens a direct one; `fanout` hands back the legs whose route does not
hold (ICE moved, DTLS gone, a tapped writer, a queue, loss injection, RED) for the Python
path to send.
"""

from __future__ import annotations

import logging
import os
from array import array
from typing import TYPE_CHECKING

from rtc.errors import BadFanoutThreads
from rtc.packets import MediaPacket, SequenceRewriter

if TYPE_CHECKING:
    from rtc._fanout import FastLeg as FastLeg
    from rtc._fanout import Rewriter as Rewriter

logger = logging.getLogger(__name__)

SWITCH = "STAGECAST_FANOUT_C"
"""Environment variable: ``0`` turns the C fan-out off (for A/B measurements)."""
THREADS = "STAGECAST_FANOUT_THREADS"
"""Environment variable: ``2`` shares each packet's SRTP and socket writes with a helper
thread (the packet's fan-out ends sooner when a second core is free); ``1`` keeps them on
the calling thread; ``auto``, the default, is 2 where the process may run on 2 cores or
more."""
DEFAULT_THREADS = "auto"
"""`THREADS` when unset: the helper shares packets of `MIN_SPLIT` legs or more wherever a
second core may take it (docs/benchmarks.md, media: "The helper thread shares the legs")."""
MIN_SPLIT = 32
"""A packet shared with the helper has at least this many legs (below it, waking the
helper costs more than it saves: docs/benchmarks.md, media)."""

try:
    from rtc import _fanout
except ImportError as error:  # pragma: no cover - the tests assert it is built
    _fanout = None  # type: ignore[assignment]
    _import_error: str | None = str(error)
else:
    _import_error = None
    _fanout.set_min_split(MIN_SPLIT)

_said = False


def threads_wanted(value: str | None, cores: int) -> int:
    """The fan-out's threads for `STAGECAST_FANOUT_THREADS` = `value` (None: unset) on a
    process allowed `cores` CPUs: ``1``, ``2``, or ``auto`` (2 from 2 cores up).
    Raises `BadFanoutThreads` for anything else."""
    chosen = DEFAULT_THREADS if value is None else value.strip().lower()
    if chosen == "auto":
        return 2 if cores >= 2 else 1
    if chosen in ("1", "2"):
        return int(chosen)
    raise BadFanoutThreads(value or "")


if _fanout is not None:
    _fanout.set_threads(threads_wanted(os.environ.get(THREADS), len(os.sched_getaffinity(0))))


def built() -> bool:
    """Whether the C extension was built and imports."""
    return _fanout is not None


def enabled() -> bool:
    """Whether new legs get a C fan-out (built, and not switched off)."""
    return _fanout is not None and os.environ.get(SWITCH, "1") != "0"


def new_leg(history: list[bytes | None]) -> FastLeg | None:
    """A `FastLeg` sharing `history` (the leg's NACK history, `HISTORY_SIZE` slots), or
    None when the C fan-out is off (logged once per process)."""
    global _said
    if not enabled():
        if not _said:
            _said = True
            reason = "switched off" if _fanout is not None else f"not built ({_import_error})"
            logger.warning("C fan-out %s: every leg takes the Python path", reason)
        return None
    assert _fanout is not None
    return _fanout.FastLeg(history)


def fanout(
    packet: MediaPacket, legs: list[FastLeg], sequence_numbers: list[int], stamps: array[int] | None
) -> tuple[int, list[int]]:
    """Send `packet` on each leg as its sequence number; returns (how many sent, the
    indexes of the legs not handled: send those through the Python path). `stamps` (an
    `array("q")`), when given, gets CLOCK_MONOTONIC ns after each send, appended in one
    call (the media benchmark's probe)."""
    assert _fanout is not None
    return _fanout.fanout(packet, legs, sequence_numbers, stamps)


def new_rewriter(first: int) -> Rewriter | SequenceRewriter:
    """A leg's `SequenceRewriter` starting at `first`: the C one (which `forward` takes)
    when the C fan-out is on, else the Python one (same behaviour)."""
    if _fanout is not None and enabled():
        return _fanout.Rewriter(first)
    return SequenceRewriter(first)


def set_threads(count: int) -> None:
    """Run each packet's SRTP and socket writes on 1 thread, or share them with a helper
    thread (2): both take the next leg not yet sent, so the calling thread never waits
    for a helper that is not running. The helper starts with the first packet it can
    share (`MIN_SPLIT` legs); 1 stops it and joins it. The C fan-out must be built."""
    assert _fanout is not None
    _fanout.set_threads(count)


def set_min_split(legs: int) -> None:
    """Share a packet with the helper only from `legs` legs up (`MIN_SPLIT` by default;
    at least 2)."""
    assert _fanout is not None
    _fanout.set_min_split(legs)


def helper_running() -> bool:
    """Whether the helper thread exists (started by a shared packet, not yet stopped)."""
    return _fanout.helper_running() if _fanout is not None else False


def shared_legs() -> tuple[int, int]:
    """(legs the calling thread sent, legs the helper sent), over the packets shared
    with the helper since the process started."""
    return _fanout.shared_legs() if _fanout is not None else (0, 0)


def threads() -> int:
    """Threads a packet's SRTP and socket writes are shared over: the setting (2 with the
    helper on, before it has started too), 1 without the helper or when it cannot start."""
    return _fanout.threads() if _fanout is not None else 1


def c_rewriter(rewriter: object) -> Rewriter | None:
    """`rewriter` if it is the C one (which `forward` takes), else None."""
    if _fanout is not None and type(rewriter) is _fanout.Rewriter:
        return rewriter
    return None


def forward(
    packet: MediaPacket,
    rewriters: list[Rewriter],
    legs: list[FastLeg],
    stamps: array[int] | None,
) -> tuple[int, list[tuple[int, int]]]:
    """`fanout` with each leg's sequence number from its rewriter (`rewriters[i]` for
    `legs[i]`; a packet a rewriter drops is not sent on that leg); the legs not handled
    come back as (index, sequence number)."""
    assert _fanout is not None
    return _fanout.forward(packet, rewriters, legs, stamps)
