"""`stagecast bench SUITE`: benchmarks that start what they need and report figures.

Every suite is a module here with `add_arguments(parser)` and `async def run(args) ->
list[Result]`. The CLI prints a table, then one machine-readable line per figure:
``RESULT <figure> <value> <unit>``.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
from collections.abc import Sequence

import psutil


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """One measured figure of a benchmark."""

    name: str
    value: float
    unit: str
    note: str = ""

    def line(self) -> str:
        """The machine-readable `RESULT` line."""
        value = f"{self.value:.0f}" if abs(self.value) >= 100 else f"{self.value:.3g}"
        return f"RESULT {self.name} {value} {self.unit}"


def machine() -> str:
    """A one-line description of this machine, for the benchmarks page."""
    cpu = platform.processor() or platform.machine()
    mem = psutil.virtual_memory().total / 2**30
    return f"{psutil.cpu_count()} cores {cpu}, {mem:.0f} GiB, Python {platform.python_version()}"


def percentile(samples: Sequence[float], pct: float) -> float:
    """The `pct` percentile (0-100) of `samples`, by nearest rank; 0.0 when empty."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(samples: Sequence[float]) -> float:
    """The median of `samples`; 0.0 when empty."""
    return statistics.median(samples) if samples else 0.0
