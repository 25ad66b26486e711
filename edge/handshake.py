"""The opening handshake of a signaling socket (RFC 6455, section 4.2): pure, no IO.

`accept_upgrade` checks a request's method and headers and returns the 101 response that
opens the socket, or raises `BadUpgrade` naming what is wrong (the edge answers 400 with
that text). No subprotocol and no extension is agreed: frames are small msgpack, framed
once for all recipients (`edge.wsframe`). `upgrade_token` is the token a client may send
with the upgrade instead of in its `join` frame.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from urllib.parse import parse_qsl

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = b"13"


class BadUpgrade(Exception):
    """The request cannot open a WebSocket; `str(error)` says why (the 400's body)."""

    def __init__(self, reason: str, *, version_header: bool = False) -> None:
        super().__init__(reason)
        self.version_header = version_header
        """Whether the 400 names the version the edge speaks (`Sec-WebSocket-Version: 13`)."""


def _tokens(value: bytes) -> set[bytes]:
    return {part.strip().lower() for part in value.split(b",")}


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def accept_upgrade(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The whole 101 response for a valid upgrade request; `BadUpgrade` otherwise.

    `headers` are (lower-case name, value) pairs as the HTTP parser read them.
    """
    if method != b"GET":
        raise BadUpgrade(f"a WebSocket upgrade is a GET, not {method.decode(errors='replace')}")
    upgrade: set[bytes] = set()
    connection: set[bytes] = set()
    key: bytes | None = None
    version: bytes | None = None
    for name, value in headers:
        if name == b"upgrade":
            upgrade |= _tokens(value)
        elif name == b"connection":
            connection |= _tokens(value)
        elif name == b"sec-websocket-key":
            if key is not None:
                raise BadUpgrade("more than one Sec-WebSocket-Key header")
            key = value.strip()
        elif name == b"sec-websocket-version":
            version = value.strip()
    if b"websocket" not in upgrade:
        raise BadUpgrade("not a WebSocket upgrade: the Upgrade header must name websocket")
    if b"upgrade" not in connection:
        raise BadUpgrade("not a WebSocket upgrade: the Connection header must include Upgrade")
    if version != VERSION:
        raise BadUpgrade("Sec-WebSocket-Version must be 13", version_header=True)
    if key is None:
        raise BadUpgrade("the Sec-WebSocket-Key header is missing")
    try:
        nonce = base64.b64decode(key, validate=True)
    except binascii.Error:
        nonce = b""
    if len(nonce) != 16:
        raise BadUpgrade("Sec-WebSocket-Key must be 16 bytes in base64")
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )


def upgrade_token(headers: Iterable[tuple[bytes, bytes]], query: bytes) -> str | None:
    """A token sent on the upgrade: ``Authorization: Bearer <token>`` or ``?access_token=``
    (the header wins; the last ``access_token`` in the query counts)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break  # the first Authorization header is the one read
    if b"access_token" not in query:
        return None
    found = None
    for field, text in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if field == "access_token":
            found = text
    return found or None


__all__ = ["VERSION", "BadUpgrade", "accept_key", "accept_upgrade", "upgrade_token"]
