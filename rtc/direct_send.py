"""A leg's per-packet write, short: SRTP into one reused buffer, then the socket itself.

Through aiortc, each RTP packet of each leg takes pylibsrtp's `Session.protect` (which
allocates a length cell and a result copy per call and checks its argument in Python),
then aiortc's `_send_rtp`, aioice's `Connection.sendto` and `StunProtocol.send_data`
(two coroutines) and asyncio's datagram transport, before the one `sendto` system call.
At 100 subscribers that path is most of the forwarder's CPU (docs/benchmarks.md, media).

- `SrtpProtector` protects with one cffi call on a buffer allocated once and returns a
  view of it (valid until the next call): no per-packet allocation but the view.
- `DatagramRoute` writes a datagram on a UDP socket as asyncio's transport would,
  without its layers: straight `sendto` while the transport has nothing queued, and
  through the transport (which queues it) when the socket is full or something is
  queued, so datagrams keep their order.
- `resuming` runs a callback each time a coroutine is about to resume, so counters kept
  elsewhere are copied into an object right before a periodic task reads them (the
  sender reports), instead of on every packet.

What pylibsrtp keeps private and this module uses (checked by tests/test_direct_send.py):
`pylibsrtp._binding` (`ffi`, `lib.srtp_protect` and its address), `Session._srtp` (the
libsrtp context) and `pylibsrtp.ERRORS` (messages by status code).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

import pylibsrtp
from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

from rtc.errors import PacketTooLong

SRTP_BUFFER_SIZE = 1500
"""As pylibsrtp's own buffer: an Ethernet MTU's worth of SRTP."""
MAX_RTP_SIZE = SRTP_BUFFER_SIZE - pylibsrtp.SRTP_MAX_TRAILER_LEN
"""The longest RTP packet protected (pylibsrtp's limit: room for the largest trailer)."""

_srtp_protect = lib.srtp_protect
_memmove = ffi.memmove
_ERRORS: list[str] = pylibsrtp.ERRORS

T = TypeVar("T")
Address = tuple[str, int] | str
"""A UDP (host, port), or a Unix datagram socket's path."""


class SrtpProtector:
    """SRTP protection of RTP packets for one libsrtp session, into a reused buffer.

    Equivalent to `pylibsrtp.Session.protect` (same libsrtp call, same errors), but the
    result is a view of this protector's buffer: send it (or copy it) before the next
    `protect`. The session must outlive the protector (it holds a reference).
    """

    __slots__ = ("_cdata", "_ctx", "_length", "_session", "_view")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session
        self._ctx: Any = session._srtp[0]
        self._cdata: Any = ffi.new("unsigned char[]", SRTP_BUFFER_SIZE)
        self._view = memoryview(ffi.buffer(self._cdata))
        self._length: Any = ffi.new("int *")

    def protect(self, packet: bytes) -> memoryview:
        """The SRTP packet for RTP `packet`; raises `pylibsrtp.Error` when libsrtp refuses
        it (a reused index, say) and `PacketTooLong` past `MAX_RTP_SIZE`."""
        size = len(packet)
        if size > MAX_RTP_SIZE:
            raise PacketTooLong(size, MAX_RTP_SIZE)
        cdata = self._cdata
        _memmove(cdata, packet, size)
        length = self._length
        length[0] = size
        status = _srtp_protect(self._ctx, cdata, length)
        if status:
            raise pylibsrtp.Error(_ERRORS[status])
        return self._view[: length[0]]


def srtp_pointers(session: pylibsrtp.Session) -> tuple[int, int]:
    """(address of libsrtp's `srtp_protect`, address of `session`'s libsrtp context), for
    C code (`rtc/_fanout.c`) to protect with the same libsrtp build that holds the session.
    Valid while `session` lives."""
    protect = int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))
    context = int(ffi.cast("uintptr_t", session._srtp[0]))
    return protect, context


class DatagramRoute:
    """Writes datagrams to one address on a UDP socket that an asyncio transport owns.

    `sendto` on the socket directly while `queued()` is 0; otherwise, and when the
    socket's buffer is full, `fallback(data, address)` (the transport's own `sendto`,
    which queues the bytes and writes them when the socket drains), so datagrams go out
    in the order they were given. Other socket errors mean the datagram is lost, as UDP
    may lose it: `send` returns False (asyncio would only report it to its protocol).
    """

    __slots__ = ("_address", "_fallback", "_queued", "_sendto", "address", "sock")

    def __init__(
        self,
        sock: socket.socket,
        address: Address,
        *,
        queued: Callable[[], int],
        fallback: Callable[[bytes, Address], object],
    ) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"a datagram route needs a UDP socket, not {sock.type!r}")
        self.sock = sock
        self._sendto = sock.sendto
        self._address = address
        self.address = address
        self._queued = queued
        self._fallback = fallback

    @property
    def queued(self) -> Callable[[], int]:
        """What says how much the transport has queued (0: write directly)."""
        return self._queued

    @property
    def fallback(self) -> Callable[[bytes, Address], object]:
        """The transport's own `sendto`, which queues a datagram."""
        return self._fallback

    def send(self, data: bytes | memoryview) -> bool:
        """Write one datagram; False if the socket refused it (the datagram is lost)."""
        if self._queued():
            self._fallback(bytes(data), self._address)
            return True
        try:
            self._sendto(data, self._address)
        except (BlockingIOError, InterruptedError):
            self._fallback(bytes(data), self._address)
        except OSError:
            return False
        return True


class _Resuming(Generic[T]):
    """Awaitable that drives `coroutine`, calling `before()` before each resumption."""

    __slots__ = ("_before", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, T], before: Callable[[], object]) -> None:
        self._coroutine = coroutine
        self._before = before

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine = self._coroutine
        value: Any = None
        error: BaseException | None = None
        while True:
            self._before()
            try:
                yielded = coroutine.send(value) if error is None else coroutine.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # cancellation included: the coroutine handles it
                value, error = None, exc


async def resuming(coroutine: Coroutine[Any, Any, T], before: Callable[[], object]) -> T:
    """Run `coroutine`, calling `before()` first and each time it is about to resume
    (after each of its suspensions: a sleep, a send), so that what it reads right after
    waking up is fresh."""
    return await _Resuming(coroutine, before)
