"""The opening handshake of a signaling socket (RFC 6455, section 4.2): pure, no IO.

`accept_upgrade` checks a request's method and headers and returns the 101 response that
opens the socket, or raises `BadUpgrade` naming what is wrong (the edge answers 400 with
that text). No subprotocol and no extension is agreed: frames are small msgpack, framed
once for all recipients (`edge.wsframe`). `plain_rtc_request` reads the common case, a
whole, plain ``GET /rtc`` request head in one piece, without the general HTTP parser (h11,
~18 µs a request); anything unusual about it is left to that parser. `upgrade_token` is
the token a client may send with the upgrade instead of in its `join` frame.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = b"13"

_REQUEST_LINE = re.compile(rb"GET /rtc(?:\?([\x21-\x7e]*))? HTTP/1\.1")
"""A plain request line for the signaling path (a query of visible ASCII only)."""
_HEADER = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*"
)
"""A header line as RFC 9110 allows it, without obsolete line folding; group 2 is the
value without the whitespace around it."""
_LEFT_TO_H11 = frozenset((b"content-length", b"transfer-encoding", b"expect"))
"""Headers that give a request a body or ask for an interim answer: the parser's to handle."""
PLAIN_HEAD_MAX = 8192
"""The longest request head read without the general parser."""


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


@dataclasses.dataclass(frozen=True, slots=True)
class PlainRequest:
    """A plain ``GET /rtc`` request head (`plain_rtc_request`)."""

    headers: list[tuple[bytes, bytes]]
    """(lower-case name, value) pairs, in order, as the general parser gives them."""
    query: bytes
    """The target's query, without the ``?`` (b"" when it has none)."""
    trailing: bytes
    """The bytes after the head (the client's first frames, when it did not wait)."""


def plain_rtc_request(data: bytes) -> PlainRequest | None:
    """The request head at the start of `data`, when it is whole and plain: ``GET /rtc``
    (with or without a query) over HTTP/1.1, well-formed header lines without obsolete
    folding, exactly one Host, and no header that gives a request a body or asks for
    ``100 Continue``. None for anything else: what the general parser then makes of it
    (the request, or a 400) is unchanged."""
    end = data.find(b"\r\n\r\n", 0, PLAIN_HEAD_MAX)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    header = _HEADER.fullmatch
    for line in lines[1:]:
        match = header(line)
        if match is None:
            return None
        name = match[1].lower()
        if name in _LEFT_TO_H11:
            return None
        if name == b"host":
            hosts += 1
        headers.append((name, match[2]))
    if hosts != 1:
        return None
    return PlainRequest(headers, request[1] or b"", data[end + 4 :])


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


__all__ = [
    "PLAIN_HEAD_MAX",
    "VERSION",
    "BadUpgrade",
    "PlainRequest",
    "accept_key",
    "accept_upgrade",
    "plain_rtc_request",
    "upgrade_token",
]
