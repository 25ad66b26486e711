"""Synthetic room-log workloads shared by the statekeeper benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator

from schemas.clock import now_ms
from schemas.log import (
    AttributesSet,
    JoinRequested,
    LeaveRequested,
    LogEvent,
    MetadataSet,
)
from schemas.models import Grant

VIEWER_GRANT = Grant(can_publish=False, can_publish_data=False)


def storm(
    room_id: str,
    *,
    viewers: int,
    speakers: int = 5,
    churn: float = 0.1,
    seed: int = 7,
    start_at: int | None = None,
    replies: bool = True,
) -> Iterator[LogEvent]:
    """A join storm: speakers, then viewers joining, with some churn and speaker updates.

    `churn` is the share of extra events that are leaves, metadata and attribute updates.
    Event times start at `start_at` (default: now) and advance 1 ms per event, so a log
    appended faster than 1,000 events/s never holds a viewer join past the room log's
    action deadline (`schemas.log.ACTION_DEADLINE_MS`). `replies=False` leaves `reply_to`
    out, which exempts the joins from that deadline whenever they are appended.
    """
    rng = random.Random(seed)
    at = now_ms() if start_at is None else start_at
    for i in range(speakers):
        at += 1
        yield JoinRequested(
            room_id=room_id,
            at=at,
            sid=f"PA_s{i}",
            participant_id=f"speaker-{i}",
            name=f"Speaker {i}",
            edge_id="ED_bench",
        )
    present: list[str] = []
    for i in range(viewers):
        at += 1
        sid = f"PA_v{i}"
        yield JoinRequested(
            room_id=room_id,
            at=at,
            sid=sid,
            participant_id=f"viewer-{i}",
            name="Attendee",
            is_viewer=True,
            grant=VIEWER_GRANT,
            edge_id="ED_bench",
            token_id="audience",
            reply_to=f"stagecast.sess.ED_bench.{sid}" if replies else None,
            req=1,
        )
        present.append(sid)
        if rng.random() < churn:
            pick = rng.random()
            if pick < 0.5 and len(present) > 10:
                gone = present.pop(rng.randrange(len(present)))
                yield LeaveRequested(room_id=room_id, at=at, sid=gone)
            elif pick < 0.75:
                yield MetadataSet(
                    room_id=room_id,
                    at=at,
                    sid=f"PA_s{rng.randrange(speakers)}",
                    metadata=f"slide {i}",
                )
            else:
                yield AttributesSet(
                    room_id=room_id,
                    at=at,
                    sid=rng.choice(present),
                    attributes={"hand": rng.choice(["raised", ""])},
                )
