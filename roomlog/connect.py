"""The one way every service opens its NATS connection.

The edge, the statekeeper and the forwarder all connect with the same options: the server
list parsed from one comma-separated URL, a client name, reconnects forever once connected
(every `reconnect_time_wait` seconds), the `NatsLink` callbacks (three log lines per outage,
counters), and the first connection bounded by `connect_timeout` (`NatsUnreachable`).

By default nothing is buffered while reconnecting (`pending_size=0`): a publish made then
fails at once instead of landing after the caller was told it failed (an append that lands
late could undo what the client did meanwhile). A service whose publishes are idempotent
re-announcements may ask for a buffer (`reconnect_buffer`).
"""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NATS

from roomlog.errors import NatsUnreachable
from roomlog.natslink import NatsLink

RECONNECT_TIME_WAIT = 0.5
"""Seconds between two reconnect attempts to the same server."""
RECONNECT_BUFFER = 2 * 1024 * 1024
"""nats-py's own buffer while reconnecting, for services that want one."""


def nats_servers(url: str) -> list[str]:
    """The servers of a comma-separated NATS URL (`nats://a:4222,nats://b:4222`)."""
    return [u.strip() for u in url.split(",") if u.strip()]


async def connect(
    url: str,
    *,
    name: str,
    link: NatsLink,
    connect_timeout: float = 10.0,
    reconnect_time_wait: float = RECONNECT_TIME_WAIT,
    reconnect_buffer: int = 0,
) -> NATS:
    """Connect to NATS at `url` (reconnecting forever afterwards) as client `name`.

    Raises `NatsUnreachable` when no server accepted within `connect_timeout` seconds.
    `reconnect_buffer` bytes of publishes are kept while reconnecting (0: none, they fail).
    """
    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=nats_servers(url),
                name=name,
                max_reconnect_attempts=-1,  # once connected, reconnect forever
                reconnect_time_wait=reconnect_time_wait,
                connect_timeout=connect_timeout,
                pending_size=reconnect_buffer,
                **link.connect_options(),
            ),
            connect_timeout,
        )
    except TimeoutError:
        raise NatsUnreachable(url, connect_timeout) from None
