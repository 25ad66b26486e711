"""Reading a room log in tests: exactly so many records, or nothing more."""

from __future__ import annotations

from roomlog.reader import LogRecord
from roomlog.seam import LogReaderPort


async def read(reader: LogReaderPort, count: int, max_wait: float = 10.0) -> list[LogRecord]:
    """Exactly `count` records from `reader` (fails naming how many came)."""
    records: list[LogRecord] = []
    for _ in range(count):  # at least one record per batch, so this bounds the loop
        if len(records) >= count:
            break
        batch = await reader.next_batch(max_wait)
        assert batch, f"waited {max_wait}s for record {len(records) + 1} of {count}"
        records.extend(batch)
    assert len(records) == count, [r.seq for r in records]
    return records


async def nothing_more(reader: LogReaderPort) -> None:
    """Nothing arrives within 0.3 s."""
    assert await reader.next_batch(0.3) == []
