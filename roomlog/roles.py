"""Who may publish and subscribe to what on NATS: one least-privilege role per service.

Every subject comes from `schemas.subjects`, so the nats-server configuration that
`stagecast up` writes and the one docs/deployment.md shows are generated from the same
definitions the services publish on. `authorization_config(users)` returns the server's
``authorization { users = [...] }`` block for a list of `RoleUser`s (a user and password,
or an NKey public key, per role).

The roles:

- ``edge``: appends client actions and server-API writes to the room log and asks whether its
  stream exists (it waits for it at start: only the statekeeper creates or updates the
  streams, so the partitions are the statekeeper's), asks the statekeeper
  (``stagecast.sk.api``), forwarders (``stagecast.fwd.*.rpc``) and, as edges before
  dispatch went through the room log did, the agent dispatcher (``stagecast.agent.api``),
  publishes room data messages and its heartbeat; reads room broadcasts, its sessions' direct
  replies and its own inbox.
- ``statekeeper``: appends timer events, reads the room log through an ephemeral pull
  consumer, appends public events, publishes room broadcasts, direct replies (to session
  subjects and to the edges' inboxes, where server-API writes wait), forwarder session
  state; dispatches agent jobs (serves ``stagecast.agent.api``, sending its list requests on
  to ``stagecast.sk.api``, reads worker heartbeats and job reports, offers jobs on
  ``stagecast.agent.jobs.<agent>``); serves
  ``stagecast.sk.api`` and its partitions' ``stagecast.sk.part.<p>`` (and
  sends a request on to the holder of its room's partition); keeps the partition leases'
  KV bucket; reads both heartbeats.
- ``forwarder``: media subjects only: its sessions and RPC, relayed tracks between
  forwarders, subscriber offers to sessions, its heartbeat; no JetStream at all.
- ``webhook``: reads the public events stream through durable consumers with acks (one per
  endpoint, which it inspects, deletes and recreates at its ack floor when it starts).
- ``agent``: an agent worker: its heartbeat and job-ended reports, the job offers to its
  agent name (``stagecast.agent.jobs.<agent>``, in a queue group) and on its own subject
  (``stagecast.agent.worker.<id>.job``); nothing of rooms (it joins them through
  an edge like any participant).
- ``admin``: everything (the operator's own tools, `stagecast up`'s checks).

A role answers the requests it receives (``allow_responses``) without a wider publish right.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import nkeys

from roomlog.connect import inbox_prefix
from schemas.subjects import (
    AGENT_API,
    AGENT_BEAT,
    AGENT_ENDED,
    AGENT_JOBS_PREFIX,
    AGENT_WORKER_PREFIX,
    EDGE_HEARTBEAT,
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    FORWARDER_HEARTBEAT,
    FORWARDER_PREFIX,
    LEASES_BUCKET,
    LOG_STREAM,
    LOG_SUBJECTS,
    RELAY_PREFIX,
    STATEKEEPER_API,
    STATEKEEPER_PARTITION_PREFIX,
)

__all__ = [
    "Permissions",
    "Role",
    "RoleUser",
    "authorization_config",
    "new_nkey_user",
    "password_var",
    "permissions",
    "write_secret",
]

JS_API = "$JS.API"


class Role(enum.StrEnum):
    """A NATS identity Stagecast's configuration knows how to permit."""

    EDGE = "edge"
    STATEKEEPER = "statekeeper"
    FORWARDER = "forwarder"
    WEBHOOK = "webhook"
    AGENT = "agent"
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True, slots=True)
class Permissions:
    """The subjects a role may publish to and subscribe to (NATS wildcards allowed)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True


def _inbox(role: Role) -> str:
    return f"{inbox_prefix(role.value)}.>"


def _stream_upkeep(*streams: str) -> tuple[str, ...]:
    """Create, update and inspect these streams (what `RoomLog.ensure` and `last_seq` do)."""
    return tuple(
        f"{JS_API}.STREAM.{verb}.{stream}"
        for stream in streams
        for verb in ("CREATE", "UPDATE", "INFO")
    )


def _consumer_reads(stream: str, *, durable: bool) -> tuple[str, ...]:
    """Make, inspect, pull from and delete consumers of one stream."""
    subjects = [
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
    ]
    if durable:
        subjects.append(f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.*")
    return tuple(subjects)


def _lease_bucket() -> tuple[str, ...]:
    """Keep the partition leases' KV bucket: make it, read and write keys, watch it."""
    stream = f"KV_{LEASES_BUCKET}"
    return (
        f"$KV.{LEASES_BUCKET}.>",
        *_stream_upkeep(stream),
        *_consumer_reads(stream, durable=False),
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"$JS.FC.{stream}.>",  # the watcher's flow-control replies
    )


def _room(channel: str) -> str:
    return f"stagecast.room.*.{channel}"


SESSIONS = "stagecast.sess.>"
"""Every session's direct replies (``stagecast.sess.<edge>.<sid>[.<socket>]``)."""


def permissions(role: Role) -> Permissions:
    """The least subject permissions `role` needs (see the module docstring)."""
    if role is Role.EDGE:
        return Permissions(
            publish=(
                LOG_SUBJECTS,
                _room("data"),
                EDGE_HEARTBEAT,
                STATEKEEPER_API,
                AGENT_API,
                f"{FORWARDER_PREFIX}.*.rpc",
                f"{JS_API}.INFO",
                f"{JS_API}.STREAM.INFO.{LOG_STREAM}",
            ),
            subscribe=("stagecast.room.*.*", SESSIONS, _inbox(role)),
        )
    if role is Role.STATEKEEPER:
        return Permissions(
            publish=(
                LOG_SUBJECTS,
                EVENTS_SUBJECTS,
                _room("speakers"),
                _room("counts"),
                _room("mod"),
                SESSIONS,
                _inbox(Role.EDGE),  # server-API writes wait for their answer there
                f"{FORWARDER_PREFIX}.*.sessions",
                f"{JS_API}.INFO",
                *_stream_upkeep(LOG_STREAM, EVENTS_STREAM),
                *_consumer_reads(LOG_STREAM, durable=False),
                f"{STATEKEEPER_PARTITION_PREFIX}.*",  # a read request sent on to its holder
                *_lease_bucket(),
                f"{AGENT_JOBS_PREFIX}.*",  # job offers to an agent name's workers
                STATEKEEPER_API,  # a stagecast.agent.api list request, sent on
            ),
            subscribe=(
                EDGE_HEARTBEAT,
                FORWARDER_HEARTBEAT,
                STATEKEEPER_API,
                AGENT_API,
                AGENT_BEAT,
                AGENT_ENDED,
                f"{STATEKEEPER_PARTITION_PREFIX}.*",
                _inbox(role),
            ),
        )
    if role is Role.FORWARDER:
        return Permissions(
            publish=(
                FORWARDER_HEARTBEAT,
                f"{FORWARDER_PREFIX}.*.rpc",
                f"{RELAY_PREFIX}.*.*",
                "stagecast.sess.*.*",  # a subscriber offer to the session's edge
                _room("voice"),  # who is talking (speaker reports, merged by edges)
            ),
            subscribe=(
                f"{FORWARDER_PREFIX}.*.sessions",
                f"{FORWARDER_PREFIX}.*.rpc",
                f"{RELAY_PREFIX}.*.*",
                _inbox(role),
            ),
        )
    if role is Role.WEBHOOK:
        return Permissions(
            publish=(
                f"{JS_API}.INFO",
                f"{JS_API}.STREAM.INFO.{EVENTS_STREAM}",
                *_consumer_reads(EVENTS_STREAM, durable=True),
                f"$JS.ACK.{EVENTS_STREAM}.>",
            ),
            subscribe=(_inbox(role),),
            allow_responses=False,
        )
    if role is Role.AGENT:
        return Permissions(
            publish=(AGENT_BEAT, AGENT_ENDED),
            subscribe=(f"{AGENT_JOBS_PREFIX}.*", f"{AGENT_WORKER_PREFIX}.*.job", _inbox(role)),
        )
    return Permissions(publish=(">",), subscribe=(">",))


_VAR = re.compile(r"[A-Z][A-Z0-9_]*")


def password_var(role: Role) -> str:
    """The environment variable holding `role`'s password: ``STAGECAST_NATS_<ROLE>_PASSWORD``."""
    return f"STAGECAST_NATS_{role.value.upper()}_PASSWORD"


@dataclasses.dataclass(frozen=True, slots=True)
class RoleUser:
    """One NATS user of a role: a `user` and a `password` (or `password_var`, the name of the
    environment variable the server reads it from), or an NKey public key (``U...``)."""

    role: Role
    user: str | None = None
    password: str | None = None
    nkey: str | None = None
    password_var: str | None = None

    def __post_init__(self) -> None:
        secrets = (self.password is not None) + (self.password_var is not None)
        by_password = self.user is not None and secrets == 1
        by_nkey = self.nkey is not None and self.user is None and secrets == 0
        if by_password == by_nkey:
            raise ValueError("a role user has either a user and a password or an NKey")
        if self.nkey is not None and not self.nkey.startswith("U"):
            raise ValueError("an NKey user is its public key, starting with 'U'")
        if self.password_var is not None and not _VAR.fullmatch(self.password_var):
            raise ValueError(f"not an environment variable name: {self.password_var!r}")

    @classmethod
    def from_env_var(cls, role: Role) -> RoleUser:
        """`role`'s user, named after it, with its password in `password_var(role)`."""
        return cls(role, user=role.value, password_var=password_var(role))


def authorization_config(users: Iterable[RoleUser]) -> str:
    """The nats-server ``authorization { users = [...] }`` block for these users.

    Strings are JSON-quoted, which the nats-server configuration format reads as is.
    """
    entries: list[str] = []
    for user in users:
        granted = permissions(user.role)
        if user.nkey is not None:
            fields = [f"nkey: {json.dumps(user.nkey)}"]
        else:
            secret = (
                f"${user.password_var}"  # the server reads it from its environment
                if user.password_var is not None
                else json.dumps(user.password)
            )
            fields = [f"user: {json.dumps(user.user)}", f"password: {secret}"]
        rules = [
            f"publish: {{ allow: {json.dumps(list(granted.publish))} }}",
            f"subscribe: {{ allow: {json.dumps(list(granted.subscribe))} }}",
        ]
        if granted.allow_responses:
            rules.append("allow_responses: true")
        block = "\n".join(f"        {rule}" for rule in rules)
        body = "\n".join(f"      {field}" for field in fields)
        entries.append(
            f"    {{  # {user.role.value}\n{body}\n      permissions: {{\n{block}\n      }}\n    }}"
        )
    return "authorization {\n  users = [\n" + "\n".join(entries) + "\n  ]\n}\n"


def new_nkey_user() -> tuple[str, str]:
    """A fresh random NKey user: ``(seed, public key)`` (``SU...``, ``U...``)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return seed.decode("ascii"), public.decode("ascii")


def write_secret(path: Path, text: str) -> Path:
    """Write `text` to `path`, readable by this user only (0600 from its creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # a file left by an earlier run keeps its mode through O_CREAT
    return path
