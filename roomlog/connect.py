"""The one way every service opens its NATS connection.

The edge, the statekeeper and the forwarder all connect with the same options: the server
list parsed from one comma-separated URL, a client name, reconnects forever once connected
(every `reconnect_time_wait` seconds), the `NatsLink` callbacks (three log lines per outage,
counters; a close on purpose is no outage), and the first connection bounded by
`connect_timeout` (`NatsUnreachable`).

Credentials: a user and password in the URL (``nats://user:pass@host:4222``), and/or a
`NatsAuth` naming an NKey seed or ``.creds`` file and the TLS files (a CA for a
``tls://`` URL, optionally a client certificate and key). A server that refuses them ends
the first connect at once with `NatsAuthRefused`, not a timeout. URLs are only ever shown
through `redact_url`, so no password reaches a log or an error message. `role` picks the
client's inbox prefix (``_INBOX_<role>``), which the role's permissions
(`roomlog.roles`) allow it to subscribe to.

By default nothing is buffered while reconnecting (`pending_size=0`): a publish made then
fails at once instead of landing after the caller was told it failed (an append that lands
late could undo what the client did meanwhile). A service whose publishes are idempotent
re-announcements may ask for a buffer (`reconnect_buffer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NATS

from roomlog.errors import NatsAuthRefused, NatsCredentialsError, NatsUnreachable
from roomlog.natslink import NatsLink

RECONNECT_TIME_WAIT = 0.5
"""Seconds between two reconnect attempts to the same server."""
RECONNECT_BUFFER = 2 * 1024 * 1024
"""nats-py's own buffer while reconnecting, for services that want one."""

ENV_CREDS = "STAGECAST_NATS_CREDS"
ENV_TLS_CA = "STAGECAST_NATS_TLS_CA"
ENV_TLS_CERT = "STAGECAST_NATS_TLS_CERT"
ENV_TLS_KEY = "STAGECAST_NATS_TLS_KEY"
_JWT_MARK = "-----BEGIN NATS USER JWT-----"
_Hook = Callable[[], Awaitable[None]]
_REFUSALS = ("authorization violation", "authentication", "user authentication revoked")


def nats_servers(url: str) -> list[str]:
    """The servers of a comma-separated NATS URL (`nats://a:4222,nats://b:4222`)."""
    return [u.strip() for u in url.split(",") if u.strip()]


def redact_url(url: str) -> str:
    """`url` (one or a comma-separated list) with any password or token replaced by ``***``."""
    shown: list[str] = []
    for server in nats_servers(url):
        try:
            parts = urlsplit(server if "://" in server else f"nats://{server}")
            host = parts.hostname or ""
            port = parts.port
        except ValueError:
            shown.append("<unparsable NATS URL>")
            continue
        if "@" not in parts.netloc:
            shown.append(server)
            continue
        host = f"[{host}]" if ":" in host else host
        where = f"{host}:{port}" if port is not None else host
        user = f"{parts.username}:***" if parts.password is not None else "***"
        shown.append(urlunsplit(parts._replace(netloc=f"{user}@{where}")))
    return ",".join(shown)


@dataclasses.dataclass(frozen=True, slots=True)
class NatsAuth:
    """Credential and TLS files for a NATS connection (a password travels in the URL).

    `creds`: an NKey user seed file (``SU...``) or a ``.creds`` file (a user JWT and its
    seed, from `nsc`). `tls_ca`: the CA that signed the server's certificate. `tls_cert`
    and `tls_key`: a client certificate (both or neither), for servers that verify clients.
    """

    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] = os.environ,
        *,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> NatsAuth:
        """Each file from its flag value when given, else from its ``STAGECAST_NATS_*`` var."""

        def pick(flag: str | None, var: str) -> Path | None:
            value = flag or env.get(var)
            return Path(value) if value else None

        return cls(
            creds=pick(creds, ENV_CREDS),
            tls_ca=pick(tls_ca, ENV_TLS_CA),
            tls_cert=pick(tls_cert, ENV_TLS_CERT),
            tls_key=pick(tls_key, ENV_TLS_KEY),
        )

    def env(self) -> dict[str, str]:
        """The ``STAGECAST_NATS_*`` variables that `from_env` reads back into this."""
        pairs = (
            (ENV_CREDS, self.creds),
            (ENV_TLS_CA, self.tls_ca),
            (ENV_TLS_CERT, self.tls_cert),
            (ENV_TLS_KEY, self.tls_key),
        )
        return {var: str(path) for var, path in pairs if path is not None}

    def connect_options(self) -> dict[str, Any]:
        """The credential and TLS keyword arguments of `nats.connect`.

        Raises `NatsCredentialsError` for a missing or unreadable file, a creds file that is
        neither a seed nor a ``.creds`` file, or a client certificate without its key.
        """
        options: dict[str, Any] = {}
        if self.creds is not None:
            text = _read(self.creds)
            if _JWT_MARK in text:
                options["user_credentials"] = str(self.creds)
            elif text.strip().startswith("SU"):
                options["nkeys_seed"] = str(self.creds)
            else:
                raise NatsCredentialsError(
                    str(self.creds), "neither an NKey user seed (SU...) nor a .creds file"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise NatsCredentialsError(
                str(self.tls_cert or self.tls_key), "a client certificate needs its key too"
            )
        if self.tls_ca is not None or self.tls_cert is not None:
            try:
                context = ssl.create_default_context(
                    cafile=str(self.tls_ca) if self.tls_ca is not None else None
                )
                if self.tls_cert is not None and self.tls_key is not None:
                    context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            except (OSError, ssl.SSLError) as exc:
                raise NatsCredentialsError(
                    str(self.tls_ca or self.tls_cert), f"unusable TLS file: {exc}"
                ) from None
            options["tls"] = context
        return options


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise NatsCredentialsError(str(path), exc.strerror or str(exc)) from None


def inbox_prefix(role: str | None) -> str:
    """The inbox prefix of a client of `role`: ``_INBOX_<role>`` (``_INBOX`` without one)."""
    return f"_INBOX_{role}" if role else "_INBOX"


def _is_refusal(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.AuthorizationError | ssl.SSLError):
        return True
    text = str(exc).lower()
    return any(mark in text for mark in _REFUSALS)


async def connect(
    url: str,
    *,
    name: str,
    link: NatsLink,
    role: str | None = None,
    auth: NatsAuth | None = None,
    connect_timeout: float = 10.0,
    reconnect_time_wait: float = RECONNECT_TIME_WAIT,
    reconnect_buffer: int = 0,
) -> NATS:
    """Connect to NATS at `url` (reconnecting forever afterwards) as client `name`.

    Raises `NatsUnreachable` when no server accepted within `connect_timeout` seconds,
    `NatsAuthRefused` as soon as a server refuses the credentials or the TLS handshake, and
    `NatsCredentialsError` for bad `auth` files. `reconnect_buffer` bytes of publishes are
    kept while reconnecting (0: none, they fail).
    """
    options = (auth or NatsAuth()).connect_options()
    callbacks = link.connect_options()
    link_error = callbacks["error_cb"]
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        if not refused.done():  # the first connect is under way
            if _is_refusal(exc):
                refused.set_result(f"{type(exc).__name__}: {exc}")
                return  # the connect ends with NatsAuthRefused, which says it once
        elif not refused.cancelled():
            return  # refused: what the abandoned client still reports adds nothing
        await link_error(exc)

    callbacks["error_cb"] = on_error
    link_disconnected = callbacks["disconnected_cb"]

    async def on_disconnected() -> None:
        # nats-py calls it on `close` and at the end of `drain` too: a link closed on
        # purpose is not lost (no "NATS link lost; reconnecting" at every clean stop).
        if not nc.is_closed:
            await link_disconnected()

    callbacks["disconnected_cb"] = on_disconnected

    def quiet_once_refused(callback: _Hook) -> _Hook:
        async def call() -> None:
            if refused.done() and not refused.cancelled():
                return  # the refused client is being closed: not a link event
            await callback()

        return call

    for hook in ("disconnected_cb", "reconnected_cb", "closed_cb"):
        callbacks[hook] = quiet_once_refused(callbacks[hook])
    settings: dict[str, Any] = {
        "servers": nats_servers(url),
        "name": name,
        "max_reconnect_attempts": -1,  # once connected, reconnect forever
        "reconnect_time_wait": reconnect_time_wait,
        "connect_timeout": connect_timeout,
        "pending_size": reconnect_buffer,
        "inbox_prefix": inbox_prefix(role),
        **options,
        **callbacks,
    }
    nc = NATS()
    connecting: asyncio.Future[Any] = asyncio.ensure_future(nc.connect(**settings))
    waiting: set[asyncio.Future[Any]] = {connecting, refused}
    done, _ = await asyncio.wait(
        waiting, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if connecting in done:
        refused.cancel()
        connecting.result()
        return nc
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    with contextlib.suppress(Exception):
        await nc.close()
    if refused in done:
        raise NatsAuthRefused(redact_url(url), refused.result())
    refused.cancel()
    raise NatsUnreachable(redact_url(url), connect_timeout)
