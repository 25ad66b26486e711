"""A join's bookkeeping and the pure rules of joining (docs/protocol.md, "Connecting").

`JoinAttempt` is what one socket's join (or resume) has done so far: the request id the
statekeeper answers, whether the event was appended, whether it is a resume or a keyed
join (which decide what a dropped socket tells the log), and the event its outcome sets.
`EdgeSession` owns the attempt; the flows in `edge.entry` fill it in. The rest is pure: the
session sid and participant id a join gets, and which room it goes to.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import secrets
import weakref

from edge.latch import Latch
from schemas.errors import ErrorCode
from schemas.subjects import room_token


@dataclasses.dataclass(slots=True)
class JoinAttempt:
    """One join or resume of a socket, from the `join` frame to the statekeeper's answer."""

    req: int
    """The `join` frame's id: the statekeeper's `joined` or `error` names it."""
    key: str = ""
    """The client's key for this connect: a retry of the join continues the same sid."""
    resuming: bool = False
    appended: bool = False
    """The join (or resume) event went to the room log (or may have)."""
    done: Latch = dataclasses.field(default_factory=Latch)
    """Set when the statekeeper answered (accepted or refused)."""

    def answers(self, req: int | None) -> bool:
        """Whether a reply naming `req` is this attempt's outcome."""
        return req == self.req

    def withdraws_on_close(self, was_joined: bool) -> bool:
        """Whether a socket that drops now withdraws its join (`LeaveRequested`) rather
        than starting the departure grace (`SessionDisconnected`).

        A join in flight with a join key is not withdrawn: the client retries it (same
        sid), and if it had landed the session just waits in its grace, so nobody in the
        room sees it join, leave and join again."""
        return not (was_joined or self.resuming or self.key)


class RandomTokens:
    """`secrets.token_urlsafe`, from the same source read `size` bytes at a time.

    A join takes three random ids (the socket's connection id, the sid, the participant
    id); each `secrets.token_urlsafe` is a ``getrandom`` system call of its own. The bytes
    are the kernel's CSPRNG output all the same, each used once. A forked child drops the
    bytes it inherited (they are its parent's to use), so parent and child never hand out
    the same ones."""

    __slots__ = ("__weakref__", "_at", "_bytes", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._bytes = b""
        self._at = 0
        held = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget(held))

    def forget(self) -> None:
        """Drop the bytes not used yet (the next token reads fresh ones)."""
        self._bytes, self._at = b"", 0

    def token(self, nbytes: int) -> str:
        """`nbytes` random bytes in url-safe base64, without padding."""
        end = self._at + nbytes
        if end > len(self._bytes):
            self._bytes = secrets.token_bytes(max(self.size, nbytes))
            self._at, end = 0, nbytes
        chunk = self._bytes[self._at : end]
        self._at = end
        return base64.urlsafe_b64encode(chunk).rstrip(b"=").decode("ascii")


def _forget(held: weakref.ref[RandomTokens]) -> None:
    tokens = held()
    if tokens is not None:
        tokens.forget()


random_token = RandomTokens().token
"""The edge's random ids (`RandomTokens`)."""


def new_sid() -> str:
    """A session sid, ``PA_`` + 16 random url-safe characters."""
    return "PA_" + random_token(12)


def new_participant_id() -> str:
    """A participant id for a token without one, ``p-`` + 12 random url-safe characters."""
    return "p-" + random_token(9)


def keyed_ids(api_key: str, token_id: str, room_id: str, join_key: str) -> tuple[str, str]:
    """The sid and generated participant id of a join with a `join_key`: the same on every
    edge for every retry of one connect, different for any other token, room or key."""
    material = "\x1f".join((api_key, token_id, room_id, join_key)).encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(material).digest()).decode()
    return "PA_" + digest[:16], "p-" + digest[16:28]


def settle_room(token_room: str | None, asked: str | None) -> str | tuple[ErrorCode, str]:
    """The room a join goes to, or why it cannot go anywhere."""
    if token_room is not None and asked is not None and asked != token_room:
        return ErrorCode.INVALID_PERMISSIONS, "the token is for another room"
    room_id = token_room if token_room is not None else asked
    if not room_id:
        return ErrorCode.BAD_REQUEST, "room_id is required with a roomless token"
    try:
        room_token(room_id)
    except ValueError as exc:
        return ErrorCode.BAD_REQUEST, f"room_id: {exc}"
    return room_id


__all__ = [
    "JoinAttempt",
    "RandomTokens",
    "keyed_ids",
    "new_participant_id",
    "new_sid",
    "random_token",
    "settle_room",
]
