"""A real Stagecast stack for the SDK's end-to-end tests, driven through `stagecast.join`.

`sdk_stack(tmp_path)` starts a private nats-server, a statekeeper on SQLite and an edge on
a free port, all in `tmp_path`; the `Stack` it yields mints tokens, joins rooms with the
SDK (and leaves every room it joined at the end) and carries a `RoomService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats

import stagecast
from edge.config import EdgeConfig
from edge.main import running_edge
from processes.natsserver import NatsServer
from roomlog.roles import Role
from schemas.models import Grant
from stagecast.client import ConnectOptions, Room
from tests.edge_fixtures import services
from tests.heartbeats import Heartbeats, watch_heartbeats
from tests.nats_logins import Logins
from tests.polling import eventually

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "devkey"
API_SECRET = "devsecret-for-sdk-tests-" + "x" * 24  # >= 32 bytes: no short-key warning
SPEAKER = Grant(
    can_publish=True, can_subscribe=True, can_publish_data=True, can_subscribe_data=True
)
HOST = Grant(
    can_publish=True,
    can_subscribe=True,
    can_publish_data=True,
    can_subscribe_data=True,
    can_moderate=True,
    can_hls=True,
)
AUDIENCE = Grant(
    can_publish=False, can_subscribe=True, can_publish_data=False, can_subscribe_data=True
)
OPTIONS = ConnectOptions(connect_timeout=15.0, request_timeout=15.0)
WAIT = 15.0


def mint(
    participant_id: str | None,
    room: str | None,
    *,
    viewer: bool = False,
    grant: Grant | None = None,
    **claims: Any,
) -> str:
    """A participant token of the test key pair (roomless when `room` is None)."""
    if grant is None:
        grant = AUDIENCE if viewer else SPEAKER
    if room is None:
        claims.setdefault("ttl", 600)
    return stagecast.generate_token(
        API_KEY,
        API_SECRET,
        room_id=room,
        participant_id=participant_id,
        is_viewer=viewer,
        grant=grant,
        **claims,
    )


@dataclasses.dataclass
class Stack:
    """A running nats-server + statekeeper + edge, and the SDK clients a test made."""

    nats: NatsServer
    url: str
    api: stagecast.RoomService
    rooms: list[Room] = dataclasses.field(default_factory=list)
    forwarders: dict[str, Any] = dataclasses.field(default_factory=dict)
    logins: Logins | None = None
    """The role logins NATS requires (None: anonymous NATS)."""
    _exit: contextlib.AsyncExitStack = dataclasses.field(default_factory=contextlib.AsyncExitStack)

    def token(
        self,
        participant_id: str | None,
        room: str | None,
        *,
        viewer: bool = False,
        grant: Grant | None = None,
        **claims: Any,
    ) -> str:
        """A participant token (roomless when `room` is None)."""
        return mint(participant_id, room, viewer=viewer, grant=grant, **claims)

    async def join(
        self,
        token: str,
        room_id: str | None = None,
        name: str | None = None,
        *,
        url: str | Sequence[str] | None = None,
        options: ConnectOptions = OPTIONS,
        auto_subscribe: bool = True,
    ) -> Room:
        """`stagecast.join` on this stack; the room is left when the stack stops."""
        room = await stagecast.client.join(
            self.url if url is None else url,
            token,
            room_id=room_id,
            name=name,
            options=options,
            auto_subscribe=auto_subscribe,
        )
        self.rooms.append(room)
        return room

    async def join_many(self, tokens: Sequence[str], room_id: str | None = None) -> list[Room]:
        """Join with every token concurrently."""
        return list(await asyncio.gather(*(self.join(t, room_id) for t in tokens)))

    def nats_url(self, role: Role) -> str:
        """The NATS URL a client of `role` uses (with its login when NATS requires one)."""
        return self.nats.url if self.logins is None else self.logins.url(self.nats, role)

    def edge(self) -> contextlib.AbstractAsyncContextManager[str]:
        """Another edge on the same NATS (`async with stack.edge() as url`)."""
        config = EdgeConfig(
            nats_url=self.nats_url(Role.EDGE), api_key=API_KEY, api_secret=API_SECRET, port=0
        )
        return running_edge(config)

    async def start_forwarder(
        self, forwarder_id: str, exit_stack: contextlib.AsyncExitStack | None = None
    ) -> Any:
        """A forwarder in this process, once the statekeeper can place media on it."""
        from forwarder.main import running_forwarder

        nc = await nats.connect(self.nats_url(Role.ADMIN))
        beats = await watch_heartbeats(nc)
        try:
            context = running_forwarder(self.nats_url(Role.FORWARDER), forwarder_id=forwarder_id)
            stack = exit_stack if exit_stack is not None else self._exit
            service = await stack.enter_async_context(context)
            await eventually(
                lambda: beats.last(forwarder_id), what=f"{forwarder_id}'s heartbeat", timeout=WAIT
            )
        finally:
            await nc.close()
        self.forwarders[forwarder_id] = service
        return service

    async def leave_all(self) -> None:
        await asyncio.gather(*(room.leave() for room in self.rooms))


@contextlib.asynccontextmanager
async def forwarder_process(
    stack: Stack, beats: Heartbeats, forwarder_id: str, log_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`stagecast forwarder` as a child process (one a test may SIGKILL), yielded once its
    heartbeat is seen on `beats`; killed at the end if it still runs."""
    argv = [
        sys.executable, "-m", "stagecast.cli", "forwarder",
        "--nats-url", stack.nats_url(Role.FORWARDER),
        "--id", forwarder_id,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with log_path.open("wb") as log_file:
        child = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=log_file, stderr=log_file
        )
        try:
            await eventually(
                lambda: beats.last(forwarder_id), what=f"{forwarder_id}'s heartbeat", timeout=30
            )
            yield child
        finally:
            if child.returncode is None:
                child.kill()
                await asyncio.wait_for(child.wait(), 10)


@contextlib.asynccontextmanager
async def sdk_stack(
    tmp_path: Path, *, forwarders: int = 0, logins: Logins | None = None, **edge_options: Any
) -> AsyncIterator[Stack]:
    """The private services (tests.edge_fixtures.services), with a RoomService, and
    `forwarders` media forwarders in this process (ids FW_0, FW_1, ...). With `logins`,
    NATS requires them and every service logs in with its own role."""
    async with (
        services(
            tmp_path, api_key=API_KEY, api_secret=API_SECRET, logins=logins, **edge_options
        ) as (server, _config, url),
        stagecast.RoomService(url, API_KEY, API_SECRET) as api,
        contextlib.AsyncExitStack() as media,
    ):
        stack = Stack(nats=server, url=url, api=api, logins=logins)
        for n in range(forwarders):
            await stack.start_forwarder(f"FW_{n}", media)
        try:
            yield stack
        finally:
            await stack.leave_all()
            await stack._exit.aclose()


class AudienceThread:
    """SDK viewers joined from a thread with its own event loop.

    Joining many clients keeps an event loop busy; doing it here keeps that work off the
    loop of the clients a test is timing (the count-coalescing check measures arrival gaps).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="audience", daemon=True)
        self._rooms: list[Room] = []
        self._thread.start()

    async def join(self, token: str, n: int, room_id: str | None = None) -> list[str]:
        """Join `n` viewers with `token` concurrently; their participant ids."""

        async def join_all() -> list[str]:
            joined = await asyncio.gather(
                *(
                    stagecast.client.join(self.url, token, room_id=room_id, options=OPTIONS)
                    for _ in range(n)
                )
            )
            self._rooms += joined
            return [room.local_participant.id for room in joined]

        future = asyncio.run_coroutine_threadsafe(join_all(), self._loop)
        return await asyncio.wrap_future(future)

    async def close(self) -> None:
        """Leave every room, stop the loop and the thread."""

        async def leave_all() -> None:
            await asyncio.gather(*(room.leave() for room in self._rooms))

        try:
            future = asyncio.run_coroutine_threadsafe(leave_all(), self._loop)
            await asyncio.wrap_future(future)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join)
            self._loop.close()


class Events:
    """Records a room's (or participant's) events, with their arrival times."""

    def __init__(self, emitter: Any, *names: str) -> None:
        self.log: list[tuple[str, float, tuple[Any, ...]]] = []
        loop = asyncio.get_running_loop()
        for name in names:
            emitter.on(name, lambda *args, _n=name: self.log.append((_n, loop.time(), args)))

    def of(self, name: str) -> list[Any]:
        """The first argument of every `name` event, in order."""
        return [args[0] if args else None for n, _t, args in self.log if n == name]

    def times(self, name: str) -> list[float]:
        return [t for n, t, _a in self.log if n == name]

    def ids(self, name: str) -> list[str]:
        return [p.id for p in self.of(name)]


__all__ = [
    "API_KEY",
    "API_SECRET",
    "AUDIENCE",
    "HOST",
    "SPEAKER",
    "WAIT",
    "AudienceThread",
    "Events",
    "Stack",
    "eventually",
    "forwarder_process",
    "mint",
    "sdk_stack",
]
