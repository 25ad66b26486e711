"""A real Stagecast stack for edge tests, and a raw msgpack WebSocket client to drive it.

`edge_stack(tmp_path)` starts a private nats-server, a statekeeper on SQLite and an edge on
a free port; `Client` speaks the signaling protocol with frames built by `schemas.encode`
(or raw bytes, to misbehave on purpose) and keeps every frame it did not ask for, so a test
can look at what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from access.admin import AdminGrant, needed_for
from access.tokens import generate_admin_token, generate_token
from edge.config import EdgeConfig
from edge.main import running_edge
from processes.natsserver import NatsServer
from roomlog.roles import Role
from schemas.client import Error, Join, JoinAccepted, Ping, Pong
from schemas.codec import Message, decode, encode
from schemas.models import Grant
from statekeeper.main import StatekeeperConfig, running_statekeeper
from statekeeper.service import Tuning
from tests.nats_logins import Logins

API_KEY = "devkey"
API_SECRET = "devsecret-for-edge-tests-" + "x" * 24  # >= 32 bytes: no key warning
ROOM = "town-hall"
FAST = Tuning(
    roster_flush_ms=20,
    snapshot_every_ms=200,
    count_tick_ms=10,
    edge_check_ms=200,
    agent_worker_timeout_ms=1_500,
)
VIEWER = Grant(can_publish=False, can_publish_data=False)
MODERATOR = Grant(can_moderate=True)
ROOMS_GRANT = AdminGrant(room_create=True, room_list=True)
WAIT = 10.0

M = TypeVar("M", bound=Message)


class Closed(Exception):
    """The socket closed while a test was waiting for a frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"socket closed: {code} {reason}")
        self.code = code
        self.reason = reason


class Client:
    """A raw signaling client: msgpack frames over one WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Message] = []
        """Every frame received and not yet taken by `expect`/`request`, in order."""
        self.seen: list[Message] = []
        """Every frame received, in order."""
        self._ids = itertools.count(1)
        self.joined: JoinAccepted | None = None

    def next_id(self) -> int:
        return next(self._ids)

    async def send(self, message: Message) -> None:
        await self.ws.send(encode(message))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def send_map(self, body: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(body, use_bin_type=True))

    async def _read(self, timeout: float) -> Message:
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from None
        assert isinstance(data, bytes), f"the edge sent a text frame: {data!r}"
        message = decode(data)
        self.seen.append(message)
        return message

    async def expect(
        self, cls: type[M], where: Callable[[M], bool] = lambda m: True, timeout: float = WAIT
    ) -> M:
        """The first frame of `cls` matching `where`, buffered or yet to come."""
        for i, frame in enumerate(self.frames):
            if isinstance(frame, cls) and where(frame):
                del self.frames[i]
                return frame
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {cls.__name__} arrived; got {self.frames!r}")
            frame = await self._read(left)
            if isinstance(frame, cls) and where(frame):
                return frame
            self.frames.append(frame)

    async def reply(self, req: int, timeout: float = WAIT) -> Message:
        """The reply (any frame with this `id`) to request `req`."""
        return await self.expect(Message, lambda m: getattr(m, "id", -1) == req, timeout)

    async def request(self, message: Message, timeout: float = WAIT) -> Message:
        await self.send(message)
        return await self.reply(message.id, timeout)  # type: ignore[attr-defined]

    async def error(self, req: int | None = None, timeout: float = WAIT) -> Error:
        """The next error frame (naming `req` when given)."""
        return await self.expect(Error, lambda e: req is None or e.id == req, timeout)

    async def sync(self) -> None:
        """Round-trip a ping: every frame queued for this socket before it has arrived."""
        reply = await self.request(Ping(id=self.next_id(), at=1))
        assert isinstance(reply, Pong), reply

    async def closed(self, timeout: float = WAIT) -> Closed:
        """Read until the socket closes; the close code and reason."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError("the socket did not close")
            try:
                self.frames.append(await self._read(left))
            except Closed as closed:
                return closed

    def of(self, cls: type[M]) -> list[M]:
        """Every received frame of `cls` (taken or not)."""
        return [m for m in self.seen if isinstance(m, cls)]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


@dataclasses.dataclass
class Stack:
    """A running nats-server + statekeeper + edge."""

    nats: NatsServer
    url: str
    config: EdgeConfig
    clients: list[Client] = dataclasses.field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/rtc"

    def token(
        self,
        participant_id: str | None,
        room: str | None = ROOM,
        *,
        viewer: bool = False,
        grant: Grant | None = None,
        **claims: Any,
    ) -> str:
        if grant is None and viewer:
            grant = VIEWER
        if room is None:
            claims.setdefault("ttl", 600)  # roomless tokens live at most 15 minutes
        return generate_token(
            API_KEY,
            API_SECRET,
            room_id=room,
            participant_id=participant_id,
            is_viewer=viewer,
            grant=grant,
            **claims,
        )

    def admin_headers(self, grant: AdminGrant = ROOMS_GRANT) -> dict[str, str]:
        """Authorization with an admin token of `grant` (default: create and list rooms)."""
        token = generate_admin_token(API_KEY, API_SECRET, **dataclasses.asdict(grant))
        return {"Authorization": f"Bearer {token}"}

    async def connect(self, **kwargs: Any) -> Client:
        ws = await connect(self.ws_url, max_size=4 * 1024 * 1024, **kwargs)
        client = Client(ws)
        self.clients.append(client)
        return client

    async def join(
        self, participant_id: str | None, room: str | None = ROOM, **token_claims: Any
    ) -> Client:
        """A connected client that joined (its `joined` frame is `client.joined`)."""
        client = await self.connect()
        token = self.token(participant_id, room, **token_claims)
        reply = await client.request(Join(id=client.next_id(), token=token))
        assert isinstance(reply, JoinAccepted), reply
        client.joined = reply
        return client

    async def api(
        self, path: str, message: Message, *, auth: bool = True, grant: AdminGrant | None = None
    ) -> httpx.Response:
        """POST a server API request, signed with `grant` (default: what it needs)."""
        headers = {"Content-Type": "application/msgpack"}
        if auth:
            headers |= self.admin_headers(grant or needed_for(message) or ROOMS_GRANT)
        async with httpx.AsyncClient(base_url=self.url, timeout=WAIT) as http:
            return await http.post(f"/api/{path}", content=encode(message), headers=headers)

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()


def statekeeper_config(
    server: NatsServer,
    tmp_path: Path,
    api_secret: str = API_SECRET,
    database_url: str | None = None,
    nats_url: str | None = None,
) -> StatekeeperConfig:
    """A test statekeeper's config: `server`'s NATS (at `nats_url`, with credentials, when
    given), SQLite in `tmp_path` (unless `database_url` names another store), fast tuning."""
    return StatekeeperConfig(
        nats_url=nats_url or server.url,
        database_url=database_url or f"sqlite+aiosqlite:///{tmp_path / 'statekeeper.db'}",
        api_secret=api_secret,
        tuning=FAST,
    )


@contextlib.asynccontextmanager
async def services(
    tmp_path: Path,
    *,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
    database_url: str | None = None,
    logins: Logins | None = None,
    **edge_options: Any,
) -> AsyncIterator[tuple[NatsServer, EdgeConfig, str]]:
    """nats-server, statekeeper and edge, all private to one test: (server, edge config, url).

    The statekeeper uses SQLite in `tmp_path` unless `database_url` names another database.
    With `logins`, the server requires them and each service logs in with its own role.
    """
    server = NatsServer(tmp_path / "nats") if logins is None else logins.server(tmp_path / "nats")

    def url_of(role: Role) -> str:
        return server.url if logins is None else logins.url(server, role)

    async with server:
        keeper_config = statekeeper_config(
            server, tmp_path, api_secret, database_url, url_of(Role.STATEKEEPER)
        )
        async with running_statekeeper(keeper_config) as keeper:
            await keeper.wait_caught_up()
            config = EdgeConfig(
                nats_url=url_of(Role.EDGE),
                api_key=api_key,
                api_secret=api_secret,
                port=0,
                **edge_options,
            )
            async with running_edge(config) as url:
                yield server, config, url


@contextlib.asynccontextmanager
async def edge_stack(tmp_path: Path, **edge_options: Any) -> AsyncIterator[Stack]:
    """The private services, with raw-socket helpers for the edge tests."""
    async with services(tmp_path, **edge_options) as (server, config, url):
        stack = Stack(nats=server, url=url, config=config)
        try:
            yield stack
        finally:
            await stack.close_clients()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with edge_stack(tmp_path) as running:
        yield running


__all__ = [
    "API_KEY",
    "API_SECRET",
    "MODERATOR",
    "ROOM",
    "VIEWER",
    "Client",
    "Closed",
    "Stack",
    "edge_stack",
    "services",
    "stack",
    "statekeeper_config",
]
