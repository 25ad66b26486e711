"""Authenticated NATS: role credentials, least-privilege permissions, refusals.

A real nats-server is configured with the authorization block `roomlog.roles` generates
(the one `stagecast up` writes and docs/deployment.md shows); every service logs in with its
own role. Wrong credentials end the first connect with `NatsAuthRefused` (and a CLI
service with one line and a non-zero status); a role publishing outside its permissions is
refused by the server and nothing lands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from aiortc.mediastreams import VideoStreamTrack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from processes.natsserver import NatsServer
from roomlog.connect import NatsAuth, connect, redact_url
from roomlog.errors import NatsAuthRefused, NatsCredentialsError
from roomlog.log import RoomLog
from roomlog.natslink import NatsLink
from roomlog.roles import (
    Role,
    RoleUser,
    authorization_config,
    new_nkey_user,
    password_var,
    permissions,
)
from schemas import subjects
from schemas.codec import decode, encode
from schemas.events import ParticipantJoinedEvent
from schemas.log import GraceExpired
from tests.nats_logins import Logins
from tests.polling import eventually
from tests.stack_fixtures import WAIT, sdk_stack
from tests.test_media import Watcher
from tests.tls_files import make_tls_files

log = logging.getLogger("tests.nats_auth")
ROOM = "auth-room"
COMPOSE_AUTH = Path(__file__).resolve().parent.parent / "deploy" / "nats-auth.conf"


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


def may_publish(role: Role, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions(role).publish)


def may_subscribe(role: Role, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions(role).subscribe)


# --------------------------------------------------------------------------- pure


def test_each_role_publishes_only_its_own_subjects() -> None:
    log_subject = subjects.room_log(ROOM)
    assert may_publish(Role.EDGE, log_subject) and may_publish(Role.STATEKEEPER, log_subject)
    assert not may_publish(Role.FORWARDER, log_subject)
    assert not may_publish(Role.WEBHOOK, log_subject)

    for channel in (subjects.room_speakers, subjects.room_counts, subjects.room_mod):
        assert may_publish(Role.STATEKEEPER, channel(ROOM))
        assert not may_publish(Role.EDGE, channel(ROOM)), channel
        assert not may_publish(Role.FORWARDER, channel(ROOM)), channel
    assert may_publish(Role.EDGE, subjects.room_data(ROOM))
    assert may_subscribe(Role.EDGE, subjects.room_speakers(ROOM))

    event = subjects.public_event(ROOM, "participant_joined")
    assert may_publish(Role.STATEKEEPER, event)
    assert not any(may_publish(r, event) for r in (Role.EDGE, Role.FORWARDER, Role.WEBHOOK))
    assert not may_subscribe(Role.WEBHOOK, event)  # it reads the stream through a consumer

    assert may_publish(Role.FORWARDER, subjects.room_voice(ROOM))  # speaker reports
    assert may_subscribe(Role.EDGE, subjects.room_voice(ROOM))
    assert not any(may_publish(r, subjects.room_voice(ROOM)) for r in (Role.EDGE, Role.WEBHOOK))
    assert may_publish(Role.FORWARDER, subjects.relay("FW_b", "TR_x"))
    assert may_publish(Role.FORWARDER, subjects.session("ED_a", "PA_b"))  # subscriber offers
    assert not may_publish(Role.FORWARDER, subjects.session_reply("ED_a", "PA_b", "c"))
    assert not may_publish(Role.FORWARDER, subjects.STATEKEEPER_API)
    assert not any(p.startswith("$JS") for p in permissions(Role.FORWARDER).publish)

    assert may_subscribe(Role.STATEKEEPER, subjects.STATEKEEPER_API)
    assert not may_subscribe(Role.EDGE, subjects.STATEKEEPER_API)  # nobody poses as it
    assert may_publish(Role.STATEKEEPER, "_INBOX_edge.abc.1")  # server-API answers
    assert not may_subscribe(Role.EDGE, "_INBOX_statekeeper.abc")
    js_create = f"$JS.API.CONSUMER.CREATE.{subjects.LOG_STREAM}"
    assert may_publish(Role.STATEKEEPER, js_create) and not may_publish(Role.EDGE, js_create)
    assert may_publish(Role.WEBHOOK, f"$JS.ACK.{subjects.EVENTS_STREAM}.relay.1.2.3.4.5")
    assert not may_publish(Role.WEBHOOK, f"$JS.ACK.{subjects.LOG_STREAM}.x.1.2.3.4.5")


def test_the_authorization_block_names_every_user_once_and_no_password_for_nkeys() -> None:
    _seed, public = new_nkey_user()
    text = authorization_config(
        [RoleUser(Role.EDGE, user="edge", password='p"w'), RoleUser(Role.FORWARDER, nkey=public)]
    )
    assert text.count("user:") == 1 and text.count("nkey:") == 1
    assert '"p\\"w"' in text  # quoted, so any password is read back as written
    assert "allow_responses: true" in text
    with pytest.raises(ValueError):
        RoleUser(Role.EDGE, user="edge")
    with pytest.raises(ValueError):
        RoleUser(Role.EDGE, nkey="SUAB")  # a seed, not a public key


def test_urls_shown_anywhere_hide_the_password() -> None:
    shown = redact_url("nats://edge:s3cret@a:4222, tls://tok3n@b:4222,nats://c:4222")
    assert shown == "nats://edge:***@a:4222,tls://***@b:4222,nats://c:4222"


def test_credential_files_are_checked_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(NatsCredentialsError):
        NatsAuth(creds=tmp_path / "missing.nk").connect_options()
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(NatsCredentialsError):
        NatsAuth(creds=junk).connect_options()
    with pytest.raises(NatsCredentialsError):
        NatsAuth(tls_cert=junk).connect_options()  # a certificate without its key
    seed, _ = new_nkey_user()
    (tmp_path / "user.nk").write_text(seed)
    assert NatsAuth(creds=tmp_path / "user.nk").connect_options() == {
        "nkeys_seed": str(tmp_path / "user.nk")
    }
    creds = tmp_path / "user.creds"  # what `nsc generate creds` writes (operator mode)
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\neyJ0eXAi...\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    assert NatsAuth(creds=creds).connect_options() == {"user_credentials": str(creds)}
    env = {"STAGECAST_NATS_CREDS": "/from/env", "STAGECAST_NATS_TLS_CA": "/ca.pem"}
    auth = NatsAuth.from_env(env, creds="/from/flag")
    assert auth.creds == Path("/from/flag") and auth.tls_ca == Path("/ca.pem")
    assert NatsAuth.from_env(auth.env()) == auth


# --------------------------------------------------------------------------- a real server


@pytest.fixture
def logins() -> Logins:
    return Logins.fresh()


@pytest.fixture
async def server(tmp_path: Path, logins: Logins) -> AsyncIterator[NatsServer]:
    async with logins.server(tmp_path / "nats") as running:
        yield running


async def test_a_wrong_password_is_refused_at_once_with_a_named_error(
    server: NatsServer, logins: Logins
) -> None:
    url = logins.url(server, Role.EDGE, password="not-the-password")
    with pytest.raises(NatsAuthRefused) as raised:
        # connect_timeout is far longer: the refusal ends the attempt, not the clock
        await connect(url, name="wrong", link=NatsLink("wrong", log), connect_timeout=60)
    assert "Authorization Violation" in raised.value.reason
    assert "not-the-password" not in str(raised.value)
    assert raised.value.url == redact_url(url)
    anonymous = server.url
    with pytest.raises(NatsAuthRefused):
        await connect(anonymous, name="anon", link=NatsLink("anon", log), connect_timeout=60)


def _service(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stagecast.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_each_service_refused_by_nats_says_so_in_one_line_and_exits_non_zero(
    server: NatsServer, logins: Logins, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_NATS")}
    env |= {"STAGECAST_API_KEY": "k", "STAGECAST_API_SECRET": "s" * 32}
    commands = {
        Role.STATEKEEPER: ["statekeeper", "--database-url", f"sqlite+aiosqlite:///{tmp_path}/s.db"],
        Role.EDGE: ["edge", "--port", "0"],
        Role.FORWARDER: ["forwarder"],
    }
    for role, command in commands.items():
        url = logins.url(server, role, password="wrong-password")
        done = await asyncio.to_thread(_service, [*command, "--nats-url", url], env)
        assert done.returncode == 3, (role, done.stdout, done.stderr)
        said = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(said) == 1, said  # the refusal, said once
        assert said[0].startswith(f"stagecast {command[0]}: NatsAuthRefused: "), said
        assert "Traceback" not in done.stderr, done.stderr
        assert "wrong-password" not in done.stderr + done.stdout


def _server_log(server: NatsServer) -> list[str]:
    return server.log_path.read_text(errors="replace").splitlines()


async def _client(server: NatsServer, logins: Logins, role: Role) -> tuple[NATS, list[str]]:
    """A client of `role` and the asynchronous errors the server sent it."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        logins.url(server, role),
        inbox_prefix=f"_INBOX_{role.value}",
        error_cb=on_error,
        max_reconnect_attempts=0,
    )
    return nc, errors


async def test_roles_publishing_outside_their_permissions_are_refused_and_nothing_lands(
    server: NatsServer, logins: Logins
) -> None:
    admin, _ = await _client(server, logins, Role.ADMIN)
    edge, edge_errors = await _client(server, logins, Role.EDGE)
    forwarder, forwarder_errors = await _client(server, logins, Role.FORWARDER)
    try:
        room_log = RoomLog(admin.jetstream())
        await room_log.ensure()
        stolen: list[bytes] = []

        async def steal(msg: Msg) -> None:
            stolen.append(msg.data)

        watch = await admin.subscribe("stagecast.>", cb=steal)
        await admin.flush()

        timer = GraceExpired(room_id=ROOM, at=1, sid="PA_x", disconnected_at=1)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await forwarder.jetstream().publish(subjects.room_log(ROOM), encode(timer), timeout=1)
        await eventually(
            lambda: any("permissions violation for publish" in e for e in forwarder_errors),
            what="the forwarder told its append was refused",
        )
        event = subjects.public_event(ROOM, "room_finished")
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await edge.jetstream().publish(event, b"forged", timeout=1)
        await edge.publish(subjects.room_speakers(ROOM), b"forged")  # statekeeper-only
        posing = await edge.subscribe(subjects.STATEKEEPER_API)  # as the statekeeper
        await edge.flush()
        await eventually(
            lambda: sum("permissions violation" in e for e in edge_errors) >= 3,
            what="the edge told of every refusal",
        )
        told = " ".join(edge_errors)
        assert re.search(r"publish to \"?stagecast\.room\.", told), told
        assert re.search(r"subscription to \"?stagecast\.sk\.api", told), told
        await admin.flush()
        assert stolen == []  # not a byte of it reached a subscriber
        await admin.publish(subjects.STATEKEEPER_API, b"a read request")
        await admin.flush()
        await edge.flush()  # anything delivered to it was queued before this pong
        # the admin's own copy reaches its callback in the subscription's task, a moment later
        await eventually(lambda: stolen == [b"a read request"], what="the admin's own copy")
        assert posing.pending_msgs == 0
        assert await room_log.last_seq() == 0
        events = await admin.jetstream().stream_info(subjects.EVENTS_STREAM)
        assert events.state.messages == 0
        await watch.unsubscribe()
    finally:
        for nc in (admin, edge, forwarder):
            await nc.close()


async def test_every_service_on_its_own_role_runs_a_room_and_a_webhook_reads_its_events(
    tmp_path: Path,
) -> None:
    logins = Logins.fresh()
    async with sdk_stack(tmp_path, forwarders=2, logins=logins) as stack:
        await stack.api.create_room(ROOM)  # edge -> log -> statekeeper -> the edge's inbox
        alice = await stack.join(stack.token("alice", ROOM))
        bob = await stack.join(stack.token("bob", ROOM))
        await eventually(lambda: "alice" in bob.remote_participants, what="alice seen by bob")
        page = await bob.get_participants()  # the statekeeper's read API
        assert {p.id for p in page.participants} == {"alice", "bob"}
        seen = Watcher(bob)
        await alice.local_participant.publish(VideoStreamTrack())
        await seen.more_frames("alice", "video")  # forwarders on the forwarder role
        await seen.close()
        # bob was placed on the other forwarder (the less loaded): the track was relayed
        assert [s.relays_out for s in stack.forwarders.values() if s.relays_out], "no relay"

        webhook = await nats.connect(
            logins.url(stack.nats, Role.WEBHOOK), inbox_prefix="_INBOX_webhook"
        )
        try:
            sub = await webhook.jetstream().pull_subscribe(
                "stagecast.events.>",
                durable="relay",
                stream=subjects.EVENTS_STREAM,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
            )
            joined: set[str] = set()

            async def more() -> bool:
                for msg in await sub.fetch(10, timeout=WAIT):
                    event = decode(msg.data)
                    if isinstance(event, ParticipantJoinedEvent):
                        joined.add(event.participant.id)
                    await msg.ack_sync()  # confirmed: the ack was allowed through
                return joined == {"alice", "bob"}

            await eventually(more, timeout=WAIT, what="both joins read by the webhook")
            info = await webhook.jetstream().consumer_info(subjects.EVENTS_STREAM, "relay")
            assert info.num_ack_pending == 0  # the acks went through
        finally:
            await webhook.close()
        await alice.leave()
        await eventually(lambda: "alice" not in bob.remote_participants, what="alice gone")
        refused = [line for line in _server_log(stack.nats) if "Violation" in line]
        assert refused == [], refused  # no role was refused anything it does


async def test_the_compose_authorization_file_takes_passwords_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords = {role: f"pw-{role.value}-{os.getpid()}" for role in Role}
    for role, password in passwords.items():
        monkeypatch.setenv(password_var(role), password)  # the server process inherits them
    probe = {"user": "admin", "password": passwords[Role.ADMIN]}
    config = COMPOSE_AUTH.read_text()
    async with NatsServer(tmp_path / "nats", config=config, probe_options=probe) as server:
        url = server.url.replace("nats://", f"nats://statekeeper:{passwords[Role.STATEKEEPER]}@")
        nc = await connect(url, name="sk", link=NatsLink("sk", log), role="statekeeper")
        await RoomLog(nc.jetstream()).ensure()  # what a statekeeper does at start
        await nc.close()
        url = server.url.replace("nats://", f"nats://edge:{passwords[Role.EDGE]}@")
        nc = await connect(url, name="edge", link=NatsLink("edge", log), role="edge")
        assert await RoomLog(nc.jetstream()).has_stream()  # what an edge does at start
        await nc.close()
        wrong = server.url.replace("nats://", f"nats://edge:{passwords[Role.WEBHOOK]}@")
        with pytest.raises(NatsAuthRefused):
            await connect(wrong, name="edge", link=NatsLink("edge", log), connect_timeout=60)


async def test_tls_with_a_ca_connects_and_a_certificate_from_another_ca_is_refused(
    tmp_path: Path, logins: Logins
) -> None:
    ca, cert, key = make_tls_files(tmp_path / "tls")
    other_ca, _, _ = make_tls_files(tmp_path / "other", name="other")
    tls = f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n'
    trusted = NatsAuth(tls_ca=ca)
    probe = logins.probe_options() | trusted.connect_options()
    server = NatsServer(tmp_path / "nats", config=logins.config() + tls, probe_options=probe)
    async with server:
        url = logins.url(server, Role.EDGE).replace("nats://", "tls://")
        nc = await connect(url, name="edge", link=NatsLink("edge", log), role="edge", auth=trusted)
        assert nc.is_connected
        assert not await RoomLog(nc.jetstream()).has_stream()  # JetStream answers: no log
        await nc.close()
        with pytest.raises(NatsAuthRefused) as raised:
            await connect(
                url,
                name="edge",
                link=NatsLink("edge", log),
                auth=NatsAuth(tls_ca=other_ca),
                connect_timeout=60,
            )
        assert "certificate" in raised.value.reason.lower()
