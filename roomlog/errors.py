"""Named errors of the room log."""

from __future__ import annotations


class LogUnavailable(RuntimeError):
    """The log could not be read for `outage` seconds (NATS down, stream missing)."""

    def __init__(self, stream: str, outage: float, reason: str) -> None:
        super().__init__(f"room log {stream} unavailable for {outage:.0f}s: {reason}")
        self.stream = stream
        self.outage = outage
        self.reason = reason


class NatsUnreachable(TimeoutError):
    """No NATS server of `url` accepted a connection within `timeout` seconds.

    A `TimeoutError`, so a caller that bounded the connect itself still catches it.
    """

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(f"NATS at {url} not reachable within {timeout} s")
        self.url = url
        self.timeout = timeout


class NatsAuthRefused(ConnectionError):
    """The NATS server refused this client's credentials or TLS (wrong password, unknown
    NKey, expired creds, a certificate the CA does not vouch for).

    `url` is redacted (no password); `reason` is what the server or TLS said.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"NATS at {url} refused the connection: {reason}")
        self.url = url
        self.reason = reason


class NatsCredentialsError(ValueError):
    """A credentials or TLS file given for NATS is missing or not what it should be."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"NATS credentials {path}: {problem}")
        self.path = path
        self.problem = problem


class StreamNotEnsured(RuntimeError):
    """JetStream refused to create or update `stream` with `replicas` replicas.

    Typically more replicas than the cluster has JetStream servers (a single server holds
    only 1), or a configuration the stream cannot take; `description` is the server's word.
    """

    def __init__(self, stream: str, replicas: int, description: str) -> None:
        super().__init__(f"stream {stream} with {replicas} replica(s) refused: {description}")
        self.stream = stream
        self.replicas = replicas
        self.description = description
