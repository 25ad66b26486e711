"""The one wall clock of the wire: milliseconds since the epoch.

Every ``at`` field of a message, every heartbeat and every ping stamp is `now_ms()`. It is
the only clock defined in the product; pure cores never call it (times come in on events).
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch (an int, as the wire carries it)."""
    return time.time_ns() // 1_000_000


__all__ = ["now_ms"]
