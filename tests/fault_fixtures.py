"""A stack whose parts can be broken: a restartable nats-server and statekeeper process.

`fault_stack(tmp_path)` starts a private nats-server, a statekeeper as its own process (so
it can be killed with SIGKILL and started again on the same SQLite file) and an edge in
this process. The `FaultStack` it yields kills and restarts each part, mints tokens, joins
SDK clients and carries a `RoomService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

import stagecast
from edge.config import EdgeConfig
from edge.main import running_edge
from processes.natsserver import NatsServer
from stagecast.client import ConnectOptions, Room
from tests.polling import eventually
from tests.stack_fixtures import API_KEY, API_SECRET, mint

OPTIONS = ConnectOptions(connect_timeout=15.0, request_timeout=15.0, join_retry_window=30.0)


class Partition:
    """A TCP relay between one client and nats-server that can be cut, as a network would.

    `cut()` drops every relayed connection and refuses new ones (a client sees its link
    lost and its reconnects fail) while everything else keeps talking to nats-server;
    `heal()` listens again on the same port.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def heal(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._pipes -= {writer, up_writer}


@dataclasses.dataclass
class FaultStack:
    """nats-server + statekeeper process + in-process edge, each breakable."""

    tmp_path: Path
    nats: NatsServer
    url: str
    api: stagecast.RoomService
    edge_id: str
    statekeeper: subprocess.Popen[bytes] | None = None
    rooms: list[Room] = dataclasses.field(default_factory=list)

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.tmp_path / 'statekeeper.db'}"

    @property
    def statekeeper_log(self) -> Path:
        return self.tmp_path / "statekeeper.log"

    # ------------------------------------------------------------------ the statekeeper

    def start_statekeeper(self) -> None:
        env = dict(os.environ, STAGECAST_API_KEY=API_KEY, STAGECAST_API_SECRET=API_SECRET)
        with open(self.statekeeper_log, "ab") as out:
            self.statekeeper = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stagecast.cli",
                    "statekeeper",
                    "--nats-url",
                    self.nats.url,
                    "--database-url",
                    self.database_url,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def kill_statekeeper(self) -> None:
        """SIGKILL the statekeeper (a crash)."""
        if self.statekeeper is not None and self.statekeeper.poll() is None:
            self.statekeeper.kill()
            self.statekeeper.wait(10)

    def stop_statekeeper(self) -> None:
        if self.statekeeper is not None and self.statekeeper.poll() is None:
            self.statekeeper.send_signal(signal.SIGTERM)
            try:
                self.statekeeper.wait(30)
            except subprocess.TimeoutExpired:
                self.statekeeper.kill()
                self.statekeeper.wait(10)

    async def healthy(self) -> bool:
        """The edge's `/healthz` answers 200."""
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=3.0) as http:
                return (await http.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        await eventually(self.healthy, timeout=timeout, what="the edge's /healthz to be 200")

    # ------------------------------------------------------------------ clients

    def token(
        self, participant_id: str | None, room: str | None, *, viewer: bool = False, **claims: Any
    ) -> str:
        return mint(participant_id, room, viewer=viewer, **claims)

    async def join(
        self,
        token: str,
        room_id: str | None = None,
        *,
        url: str | Sequence[str] | None = None,
        options: ConnectOptions = OPTIONS,
        auto_subscribe: bool = True,
    ) -> Room:
        room = await stagecast.client.join(
            self.url if url is None else url,
            token,
            room_id=room_id,
            options=options,
            auto_subscribe=auto_subscribe,
        )
        self.rooms.append(room)
        return room

    @contextlib.asynccontextmanager
    async def another_edge(self, nats_url: str) -> AsyncIterator[tuple[str, str]]:
        """Another edge, on NATS at `nats_url` (a `Partition`, say): (its url, its id)."""
        config = EdgeConfig(nats_url=nats_url, api_key=API_KEY, api_secret=API_SECRET, port=0)
        async with running_edge(config) as url:
            yield url, config.edge_id

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/rtc"

    async def identities(self, room_id: str) -> list[str]:
        page = await self.api.list_participants(room_id, limit=500)
        return sorted(p.id for p in page.participants)


@contextlib.asynccontextmanager
async def fault_stack(tmp_path: Path, **edge_options: Any) -> AsyncIterator[FaultStack]:
    """See the module docstring."""
    async with NatsServer(tmp_path / "nats") as server:
        config = EdgeConfig(
            nats_url=server.url, api_key=API_KEY, api_secret=API_SECRET, port=0, **edge_options
        )
        stack: FaultStack | None = None
        try:
            async with (
                running_edge(config) as url,
                stagecast.RoomService(url, API_KEY, API_SECRET) as api,
            ):
                stack = FaultStack(
                    tmp_path=tmp_path, nats=server, url=url, api=api, edge_id=config.edge_id
                )
                stack.start_statekeeper()
                await stack.wait_healthy()
                try:
                    yield stack
                finally:
                    await asyncio.gather(*(r.leave() for r in stack.rooms), return_exceptions=True)
        finally:
            if stack is not None:
                stack.stop_statekeeper()


__all__ = ["OPTIONS", "FaultStack", "Partition", "fault_stack"]
