"""The webhook sender against a real nats-server (roles enforced) and real HTTP endpoints.

Public events are appended the way the statekeeper appends them (`RoomLog.publish_events`);
the sender runs on the `webhook` role, in-process or as a `stagecast webhooks` subprocess
killed with SIGKILL. Every delivery is checked with the third-party `standardwebhooks`
package and the LiveKit JWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from processes.natsserver import NatsServer
from roomlog.log import RoomLog
from roomlog.roles import Role
from schemas.subjects import EVENTS_STREAM
from tests.nats_logins import Logins
from tests.polling import eventually
from tests.webhook_fixtures import (
    API_KEY,
    API_SECRET,
    SECRET,
    HttpReceiver,
    assert_room_order,
    joins,
    track,
    verified,
)
from webhooks.delivery import Backoff
from webhooks.endpoints import Endpoint, endpoints_from_options
from webhooks.main import WebhooksConfig, run_senders
from webhooks.sender import SenderSettings

WAIT = 30.0
FAST = Backoff(base=0.02, cap=0.2, horizon=3600.0)


@pytest.fixture
def logins() -> Logins:
    return Logins.fresh()


@pytest.fixture
async def server(tmp_path: Path, logins: Logins) -> AsyncIterator[NatsServer]:
    nats_server = logins.server(tmp_path / "nats")
    await nats_server.start()
    try:
        yield nats_server
    finally:
        await nats_server.stop()


@pytest.fixture
async def admin(server: NatsServer, logins: Logins) -> AsyncIterator[NATS]:
    nc = await nats.connect(logins.url(server, Role.ADMIN))
    await RoomLog(nc.jetstream()).ensure()
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    http = await HttpReceiver().start()
    try:
        yield http
    finally:
        await http.close()


async def publish(admin: NATS, events: Sequence[tuple[str, str, object, str]]) -> None:
    await RoomLog(admin.jetstream()).publish_events(events)  # type: ignore[arg-type]


async def consumer_exists(admin: NATS, endpoint: Endpoint) -> bool:
    try:
        await admin.jetstream().consumer_info(EVENTS_STREAM, endpoint.consumer)
    except nats.js.errors.NotFoundError:
        return False
    return True


@contextlib.asynccontextmanager
async def sending(
    server: NatsServer,
    logins: Logins,
    admin: NATS,
    endpoints: list[Endpoint],
    *,
    timeout: float = 10.0,
    max_connections: int = 256,
    backoff: Backoff = FAST,
) -> AsyncIterator[asyncio.Task[object]]:
    """The sender on the webhook role, in-process, until the block ends."""
    settings = SenderSettings(
        api_key=API_KEY,
        api_secret=API_SECRET,
        backoff=backoff,
        request_timeout=timeout,
        max_connections=max_connections,
    )
    config = WebhooksConfig(logins.url(server, Role.WEBHOOK), tuple(endpoints), settings)
    stop = asyncio.Event()
    task: asyncio.Task[object] = asyncio.create_task(run_senders(config, stop))

    async def bound() -> bool:
        assert not task.done(), task
        return all([await consumer_exists(admin, e) for e in endpoints])

    await eventually(bound, timeout=WAIT, what="the sender's consumers")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


def endpoint(receiver: HttpReceiver, path: str = "/hook", **options: list[str]) -> Endpoint:
    return endpoints_from_options([receiver.url(path)], [SECRET], **options)[0]


def ids(receiver: HttpReceiver, path: str = "/hook") -> list[str]:
    """The delivered events' ids (from the bodies), in the order delivered."""
    return [str(r.doc["id"]) for r in receiver.delivered(path)]


# --------------------------------------------------------------------------- delivery


async def test_every_event_is_delivered_signed_by_both_schemes_and_filtered(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver
) -> None:
    speakers = endpoint(receiver, "/speakers")
    everyone = endpoint(receiver, "/joins", events=["participant_joined"], participants=["all"])
    rooms = ("r1", "r2", "room with spaces/é")
    async with sending(server, logins, admin, [speakers, everyone]):
        for room in rooms:
            await publish(admin, [*joins(room, 12, viewer_every=3), track(room, 1)])

        def complete() -> bool:
            return len(receiver.delivered("/joins")) == 36 and len(
                receiver.delivered("/speakers")
            ) == 3 * (8 + 1)

        await eventually(complete, timeout=WAIT, what="every delivery")
    for request in receiver.requests:
        doc = verified(request)
        assert doc["event"] in {"participant_joined", "track_published"}
    speaker_docs = [r.doc for r in receiver.delivered("/speakers")]
    assert not any(d["participant"]["isViewer"] for d in speaker_docs)  # speakers only
    assert {d["room"]["name"] for d in speaker_docs} == set(rooms)
    join_docs = [r.doc for r in receiver.delivered("/joins")]
    assert sum(d["participant"]["isViewer"] for d in join_docs) == 12  # viewers too
    assert {d["event"] for d in join_docs} == {"participant_joined"}  # no track event
    for room in rooms:
        assert_room_order(ids(receiver, "/joins"), room, 12)


async def test_an_endpoint_failing_for_a_while_gets_everything_in_order_afterwards(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver
) -> None:
    async def flaky(_path: str, _body: bytes) -> int:
        return 500 if receiver.arrived <= 40 else 204

    receiver.answer = flaky
    async with sending(server, logins, admin, [endpoint(receiver)]):
        await publish(admin, [*joins("a", 15), *joins("b", 15)])
        await eventually(lambda: len(receiver.delivered()) == 30, timeout=WAIT, what="all 30")
    assert sum(r.status == 500 for r in receiver.requests) == 40
    delivered = ids(receiver)
    for room in ("a", "b"):  # exactly once each, in order (no restart: no duplicates)
        assert [i for i in delivered if i.startswith(f"{room}.")] == [
            f"{room}.{n}" for n in range(15)
        ]
    for request in receiver.delivered():
        verified(request)


async def test_a_hanging_endpoint_delays_neither_another_endpoint_nor_another_room(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver
) -> None:
    never = asyncio.Event()

    async def hang_some(path: str, body: bytes) -> int:
        if path == "/dead" or b'"name":"stuck' in body:
            await never.wait()
        return 200

    receiver.answer = hang_some
    dead, alive = endpoint(receiver, "/dead"), endpoint(receiver, "/alive")
    stuck_rooms = ("stuck0", "stuck1")
    # three connections per endpoint: all of /dead's end up hung (both stuck rooms and
    # "free"), /alive has two hung and the third serves "free"
    async with sending(server, logins, admin, [dead, alive], timeout=600.0, max_connections=3):
        await publish(admin, [e for room in stuck_rooms for e in joins(room, 3)])
        await eventually(lambda: receiver.arrived == 2 + 2, timeout=WAIT, what="hung POSTs")
        await publish(admin, joins("free", 20))
        await eventually(
            lambda: len(receiver.delivered("/alive")) == 20, timeout=WAIT, what="free's 20"
        )
        assert ids(receiver, "/alive") == [f"free.{n}" for n in range(20)]
        assert receiver.delivered("/dead") == []
        await eventually(lambda: receiver.arrived == 2 + 2 + 1 + 20, timeout=WAIT, what="all")


async def test_a_410_disables_the_endpoint_and_only_it(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver
) -> None:
    async def gone_or_ok(path: str, _body: bytes) -> int:
        return 410 if path == "/gone" else 200

    receiver.answer = gone_or_ok
    gone, fine = endpoint(receiver, "/gone"), endpoint(receiver, "/fine")
    async with sending(server, logins, admin, [gone, fine]):
        await publish(admin, joins("a", 5))

        async def disabled() -> bool:
            return len(receiver.delivered("/fine")) == 5 and not await consumer_exists(admin, gone)

        await eventually(disabled, timeout=WAIT, what="/gone disabled, /fine served")
        await publish(admin, joins("a", 5, start=5))
        await eventually(lambda: len(receiver.delivered("/fine")) == 10, timeout=WAIT)
    assert [r.path for r in receiver.requests].count("/gone") == 1


async def test_events_past_the_horizon_are_given_up_in_order_and_free_their_room(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver
) -> None:
    async def refuse_doomed(_path: str, body: bytes) -> int:
        return 500 if b'"name":"doomed"' in body else 200

    receiver.answer = refuse_doomed
    hook = endpoint(receiver)
    short = Backoff(base=0.05, cap=0.1, horizon=0.6)
    async with sending(server, logins, admin, [hook], backoff=short):
        await publish(admin, [*joins("doomed", 3), *joins("fine", 3)])

        async def all_acknowledged() -> bool:
            info = await admin.jetstream().consumer_info(EVENTS_STREAM, hook.consumer)
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(all_acknowledged, timeout=WAIT, what="every event done with")
    assert ids(receiver) == [f"fine.{n}" for n in range(3)]
    tried = [r.doc["id"] for r in receiver.requests if r.status == 500]
    assert sorted(set(tried)) == [f"doomed.{n}" for n in range(3)]
    assert tried == sorted(tried, key=lambda i: int(i.rsplit(".", 1)[1]))  # in order
    assert len(tried) > 3  # each retried before it was given up


# --------------------------------------------------------------------------- restarts


async def test_a_restart_resends_what_was_not_delivered_before_anything_newer(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver
) -> None:
    healthy = False

    async def held_until_healthy(_path: str, body: bytes) -> int:
        return 200 if healthy or b'"name":"held"' not in body else 503

    receiver.answer = held_until_healthy
    hook = endpoint(receiver)
    async with sending(server, logins, admin, [hook]):
        await publish(admin, [*joins("held", 5), *joins("free", 5)])
        await eventually(lambda: len(receiver.delivered()) == 5, timeout=WAIT, what="free")
        await eventually(lambda: receiver.arrived >= 8, timeout=WAIT, what="held retried")
    # stopped with held's five unacknowledged; more of both rooms arrive meanwhile
    await publish(admin, [*joins("held", 5, start=5), *joins("free", 5, start=5)])
    healthy = True
    async with sending(server, logins, admin, [hook]):
        await eventually(lambda: len(receiver.delivered()) >= 25, timeout=WAIT, what="all")
    delivered = ids(receiver)
    assert_room_order(delivered, "held", 10)
    assert_room_order(delivered, "free", 10)
    held = [i for i in delivered if i.startswith("held.")]
    assert held == [f"held.{n}" for n in range(10)]  # nothing newer jumped the queue


async def test_kill_9_mid_burst_then_restart_delivers_everything_in_order(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver, tmp_path: Path
) -> None:
    async def slowish(_path: str, _body: bytes) -> int:
        await asyncio.sleep(0.005)
        return 200

    receiver.answer = slowish
    hook = endpoint(receiver)
    env = dict(
        os.environ,
        STAGECAST_NATS_URL=logins.url(server, Role.WEBHOOK),
        STAGECAST_API_KEY=API_KEY,
        STAGECAST_API_SECRET=API_SECRET,
    )
    args = [
        sys.executable, "-m", "stagecast.cli", "webhooks",
        "--webhook-url", receiver.url(), "--webhook-secret", SECRET,
        "--webhook-retry-base", "0.05",
    ]  # fmt: skip
    rooms, first, second = ("k1", "k2", "k3"), 100, 20

    def start() -> subprocess.Popen[bytes]:
        with open(tmp_path / "webhooks.log", "ab") as out:
            return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)

    sender = start()
    try:
        await eventually(lambda: consumer_exists(admin, hook), timeout=WAIT, what="consumer")
        for room in rooms:
            await publish(admin, joins(room, first))
        await eventually(lambda: len(receiver.requests) >= 60, timeout=WAIT, what="60 in")
        sender.kill()  # SIGKILL, mid-burst
        sender.wait(timeout=WAIT)
        at_kill = len(receiver.requests)
        assert at_kill < len(rooms) * first, "the burst ended before the kill"
        for room in rooms:
            await publish(admin, joins(room, second, start=first))
        sender = start()
        total = first + second

        def complete() -> bool:
            assert sender.poll() is None, (tmp_path / "webhooks.log").read_text()
            return {i for i in ids(receiver)} == {
                f"{room}.{n}" for room in rooms for n in range(total)
            }

        await eventually(complete, timeout=WAIT * 2, what="every event after the restart")
    finally:
        sender.kill()
        sender.wait(timeout=WAIT)
    delivered = ids(receiver)
    for room in rooms:
        assert_room_order(delivered, room, total)
    bodies: dict[str, bytes] = {}
    for request in receiver.delivered():
        verified(request)
        # a duplicate is the same event: same webhook-id, same body
        assert bodies.setdefault(request.headers["webhook-id"], request.body) == request.body


async def test_a_nats_restart_mid_burst_loses_nothing_and_keeps_order(
    server: NatsServer, logins: Logins, admin: NATS, receiver: HttpReceiver
) -> None:
    async def slowish(_path: str, _body: bytes) -> int:
        await asyncio.sleep(0.005)
        return 200

    receiver.answer = slowish
    async with sending(server, logins, admin, [endpoint(receiver)]):
        await publish(admin, [*joins("n1", 60), *joins("n2", 60)])
        await eventually(lambda: len(receiver.requests) >= 20, timeout=WAIT, what="20 in")
        await server.restart()
        await eventually(lambda: admin.is_connected, timeout=WAIT, what="admin back")

        async def more() -> bool:
            await publish(admin, [*joins("n1", 10, start=60), *joins("n2", 10, start=60)])
            return True  # a retry stores nothing twice: the ids deduplicate

        await eventually(more, timeout=WAIT, what="appended after the restart")

        def complete() -> bool:
            return set(ids(receiver)) == {f"{r}.{n}" for r in ("n1", "n2") for n in range(70)}

        await eventually(complete, timeout=WAIT, what="every event")
    for room in ("n1", "n2"):
        assert_room_order(ids(receiver), room, 70)


# --------------------------------------------------------------------------- configuration


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_WEBHOOK_")}
    env.update(STAGECAST_API_KEY=API_KEY, STAGECAST_API_SECRET=API_SECRET)
    return subprocess.run(
        [sys.executable, "-m", "stagecast.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "stagecast webhooks: webhook url: no endpoint configured"),
        (("--webhook-url", "http://127.0.0.1:9/h"), "webhook secret: 0 secrets for 1 URLs"),
        (("--webhook-url", "http://x/h", "--webhook-secret", "nope"), "webhook secret:"),
        (("--webhook-url", "mailto:x", "--webhook-secret", SECRET), "webhook url: not an http"),
        (
            ("--webhook-url", "http://x/h", "--webhook-secret", SECRET, "--webhook-events", "x"),
            "webhook events: unknown x",
        ),
        (
            ("--webhook-url", "http://x/h", "--webhook-secret", SECRET, "--webhook-horizon", "0"),
            "retry horizon must be positive",
        ),
    ],
)
def test_bad_configuration_is_a_named_error(args: tuple[str, ...], message: str) -> None:
    done = _cli("webhooks", "--nats-url", "nats://127.0.0.1:9", *args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_up_refuses_a_bad_webhook_before_starting_anything(tmp_path: Path) -> None:
    done = _cli(
        "up", "--data-dir", str(tmp_path), "--webhook-url", "http://x/h",
        "--webhook-secret", "whsec_c2hvcnQ=",
    )  # fmt: skip
    assert done.returncode != 0
    assert "stagecast up: webhook secret: 5 bytes" in done.stderr, done.stderr
    assert not (tmp_path / "nats").exists()
    done = _cli(
        "up", "--data-dir", str(tmp_path), "--webhook-url", "http://x/h",
        "--webhook-secret", SECRET, "--webhook-horizon", "-1",
    )  # fmt: skip
    assert "stagecast up: --webhook-horizon: the retry horizon must be positive" in done.stderr
    assert not (tmp_path / "nats").exists()
