"""The HTTP/1.1 client of the webhook sender: keep-alive POSTs to one endpoint (h11).

Every endpoint has its own `EndpointPool`: at most `max_connections` connections at once,
idle ones kept for the next POST. A sender only ever talks to one origin per endpoint and
never needs redirects, cookies or proxies, so this is all it takes; httpx's pool spent
about a millisecond of CPU per request scanning its connections.

`post` returns the answer's status, or None when there was none in `timeout` seconds
(refused, reset, TLS failure, timeout): for the sender both mean "try again later". A
kept-alive connection the server closed meanwhile is retried once on a fresh one at once
(a POST is safe to repeat: its ``webhook-id`` makes it idempotent). Answers' bodies are
read and dropped (past 64 KiB the connection is closed instead of drained). ``https``
verifies the server against the system's CAs (or `ssl_context`; ``SSL_CERT_FILE`` works).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import h11

__all__ = ["EndpointPool"]

log = logging.getLogger("stagecast.webhooks")
MAX_ANSWER_BYTES = 64 * 1024
_READ = 64 * 1024
_FAILURES = (OSError, TimeoutError, EOFError, h11.ProtocolError, ssl.SSLError)


class _Connection:
    """One HTTP/1.1 connection, used for one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT)

    @property
    def usable(self) -> bool:
        """False once the server closed it (seen without a read)."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def post(
        self, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, bool]:
        """Send one POST; its status and whether the connection can carry another."""
        http = self.http
        data = http.send(h11.Request(method="POST", target=target, headers=headers))
        data = (data or b"") + (http.send(h11.Data(data=body)) or b"")
        data += http.send(h11.EndOfMessage()) or b""
        self.writer.write(data)
        await self.writer.drain()
        status: int | None = None
        drained = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await self.reader.read(_READ))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                drained += len(event.data)
                if drained > MAX_ANSWER_BYTES and status is not None:
                    return status, False
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                if status is None:
                    raise EOFError("closed without an answer")
                return status, False
        if status is None:  # pragma: no cover - h11 ends a message only after a response
            raise EOFError("no response")
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
            return status, True
        return status, False

    def close(self) -> None:
        self.writer.close()


class EndpointPool:
    """POSTs to one URL over at most `max_connections` keep-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 256,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.authority = parts.netloc.rpartition("@")[2]
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.ssl_context = ssl_context or (ssl.create_default_context() if self.tls else None)
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self.ssl_context,
            server_hostname=self.host if self.tls else None,
            limit=_READ,
        )
        return _Connection(reader, writer)

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    async def post(self, headers: Mapping[str, str], body: bytes) -> int | None:
        """POST `body`; the answer's status, or None when none came (see the module)."""
        fields = [("host", self.authority), ("content-length", str(len(body)))]
        fields += headers.items()
        async with self._slots:
            conn = self._idle_connection()
            for fresh in (conn is None, True):
                try:
                    async with asyncio.timeout(self.timeout):
                        if conn is None:
                            conn = await self._open()
                        status, reusable = await conn.post(self.target, fields, body)
                except _FAILURES as exc:
                    if conn is not None:
                        conn.close()
                        conn = None
                    if fresh or isinstance(exc, TimeoutError):
                        log.info("webhook POST to %s: %s", self.authority, type(exc).__name__)
                        return None
                    continue  # a kept-alive connection closed under us: once more, fresh
                except BaseException:  # cancelled mid-request: the connection is unusable
                    if conn is not None:
                        conn.close()
                    raise
                if reusable and not self._closed:
                    self._idle.append(conn)
                else:
                    conn.close()
                return status
        return None  # pragma: no cover - the loop always returns

    async def close(self) -> None:
        """Close the idle connections (those in use close when their POST ends)."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> EndpointPool:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.close()
