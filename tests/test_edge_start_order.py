"""Start order does not matter: an edge never creates the room log, the statekeeper does.

On an empty nats-server requiring the role logins, an edge starts first: it says it waits for
the log's stream (`/healthz` 503 naming it; a join is refused `UNAVAILABLE`, retryable, at
once). A statekeeper started afterwards with 8 partitions makes the stream with 8, and a
client joins through the same edge. The edge's own login may not create a stream at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig
from websockets.asyncio.client import connect

from edge.config import EdgeConfig
from edge.main import running_edge
from roomlog.roles import Role
from schemas.client import Error, Join, JoinAccepted
from schemas.subjects import LOG_STREAM, log_transform_destination
from statekeeper.main import StatekeeperConfig, running_statekeeper
from tests.edge_fixtures import API_KEY, API_SECRET, FAST, WAIT, Client, Stack
from tests.nats_logins import Logins
from tests.polling import eventually

PARTITIONS = 8


async def _healthz(url: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        got = await http.get("/healthz")
        return got.status_code, got.text


async def test_an_edge_started_first_waits_for_the_log_a_statekeeper_makes_with_its_partitions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stagecast.edge")
    logins = Logins.fresh()
    async with logins.server(tmp_path / "nats") as server:
        edge = EdgeConfig(
            nats_url=logins.url(server, Role.EDGE),
            api_key=API_KEY,
            api_secret=API_SECRET,
            port=0,
        )
        async with running_edge(edge) as url:
            stack = Stack(nats=server, url=url, config=edge)
            status, reason = await _healthz(url)
            assert status == 503 and LOG_STREAM in reason
            waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
            assert len(waits) == 1 and LOG_STREAM in waits[0]

            early = Client(await connect(stack.ws_url))
            try:
                refused = await early.request(Join(id=1, token=stack.token("early")))
                assert isinstance(refused, Error), refused
                assert refused.code == "UNAVAILABLE" and LOG_STREAM in refused.message
            finally:
                await early.close()

            keeper = StatekeeperConfig(
                nats_url=logins.url(server, Role.STATEKEEPER),
                database_url=f"sqlite+aiosqlite:///{tmp_path / 'statekeeper.db'}",
                api_secret=API_SECRET,
                partitions=PARTITIONS,
                owned=tuple(range(PARTITIONS)),
                tuning=FAST,
            )
            async with running_statekeeper(keeper) as running:
                await running.wait_caught_up()
                admin = await nats.connect(logins.url(server, Role.ADMIN))
                try:
                    info = await admin.jetstream().stream_info(LOG_STREAM)
                finally:
                    await admin.close()
                transform = info.config.subject_transform
                assert transform is not None
                assert transform.dest == log_transform_destination(PARTITIONS)

                async def healthy() -> bool:
                    return (await _healthz(url))[0] == 200

                await eventually(healthy, what="the edge to see the log", timeout=WAIT)
                joined = await stack.join("late")
                assert isinstance(joined.joined, JoinAccepted)
                await stack.close_clients()
            waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
            assert len(waits) == 1, waits  # once, however long it waited


async def test_the_edge_login_may_not_create_a_stream(tmp_path: Path) -> None:
    logins = Logins.fresh()
    async with logins.server(tmp_path / "nats") as server:
        nc = await nats.connect(logins.url(server, Role.EDGE), allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=2.0)
            with pytest.raises(nats.errors.Error):
                await js.add_stream(StreamConfig(name=LOG_STREAM, subjects=["stagecast.log.*"]))
        finally:
            await nc.close()
        admin = await nats.connect(logins.url(server, Role.ADMIN))
        try:
            names = await admin.jetstream().streams_info()
        finally:
            await admin.close()
        assert names == []
