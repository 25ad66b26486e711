"""A signaling socket after its upgrade: one `asyncio.Protocol`, no task while idle.

`RtcSocket` takes over the transport once `edge.serving` has answered the opening
handshake. It reads the client's frames (`edge.wsread`): each whole message goes to its
`RtcReceiver` (the session, `edge.session`) as it completes, a ping is answered with a
pong at once, a close is echoed with the client's code, and a frame that breaks the
protocol closes the socket with the code `edge.wsread` names (1002, 1007, 1009). It is
also the socket's `FrameSink` (`edge.sendqueue`): complete frames built once
(`edge.wsframe`) are written straight to the transport while it is not paused, and the
queue is drained when it resumes. The receiver may pause reading while it still has
messages to handle (the socket's backpressure: the client's bytes wait in the kernel).

`Liveness`: one edge-wide sweep instead of a ping timer per socket: a socket silent for
`interval` seconds gets a ping, one silent for `timeout` seconds (plus however long the
edge's own loop ran late meanwhile, `edge.looplag`) is dropped. A socket the edge keeps
writing to is watched by TCP instead (``TCP_USER_TIMEOUT``: bytes unacknowledged for
`timeout` seconds end the connection) and pinged only once silent for `recheck` seconds,
so an audience that only reads costs no ping and no pong while its counts flow. Its set of
sockets is every open signaling socket, which is also how the edge closes them when it
stops (`close_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket as tcp
from collections.abc import Callable
from typing import Protocol

from edge.looplag import LoopLag
from edge.metrics import EdgeMetrics
from edge.wsframe import PING as PING_FRAME
from edge.wsread import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    parse_close,
    pong_frame,
    text_of,
)

log = logging.getLogger("stagecast.edge")

CLOSE_TIMEOUT = 10.0
"""Seconds a socket waits for the client to answer its close before closing the TCP side."""
LAG_PROBE_S = 0.25
"""Seconds between the loop-lag probes of the liveness sweep."""
LAG_RECENT_S = 1.0
"""Seconds of probes `Liveness.behind` looks back over."""


class RtcReceiver(Protocol):
    """Who handles what a client sends on its socket (`edge.session.EdgeSession`)."""

    def received(self, data: bytes | None, text: str | None) -> None:
        """A whole message: binary (`data`) or text (`text`)."""

    def socket_closed(self) -> None:
        """The socket is closing or gone (the client closed it, broke the protocol, or the
        connection was lost). Called at most once."""


class RtcSocket(asyncio.Protocol):
    """One signaling socket's protocol (see the module docstring).

    Made by `edge.serving` with the transport it took over; `receiver` is set once the
    socket is open (None for a socket that is only told why it is refused). `on_lost` is
    called once when the connection is gone (the connection ledger forgets it).
    """

    __slots__ = (
        "_close_timer",
        "_on_lost",
        "_reading_paused",
        "_watched",
        "_writing_paused",
        "close_sent",
        "last_heard",
        "last_written",
        "loop",
        "lost",
        "on_writable",
        "pinged",
        "reader",
        "ready",
        "receiver",
        "transport",
        "wrote",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        liveness: Liveness,
        max_message: int,
        on_lost: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.loop = loop
        self.reader: FrameReader | None = FrameReader(max_message)
        """None once the client broke the protocol: the rest of its bytes are discarded."""
        self.receiver: RtcReceiver | None = None
        self.on_writable: Callable[[], None] | None = None
        self.ready = True
        """`FrameSink.ready`, kept up to date (read once per frame sent, so not computed)."""
        self.last_heard = self.last_written = loop.time()
        self.wrote = False
        """A frame was written since the last sweep (the sweep turns it into `last_written`)."""
        self.pinged = False
        self.close_sent = False
        self.lost = False
        self._on_lost: Callable[[], None] | None = on_lost
        self._reading_paused = False
        self._writing_paused = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._watched = liveness.sockets
        self._watched.add(self)
        liveness.watch_writes(transport)

    # ------------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        self.pinged = False
        reader = self.reader
        if reader is None or self.lost:
            return  # after a protocol error: discarded
        try:
            received = reader.feed(data)
            for opcode, payload in received:
                if opcode == BINARY:
                    if not self.close_sent and self.receiver is not None:
                        self.receiver.received(payload, None)
                elif opcode == TEXT:
                    text = text_of(payload)
                    if not self.close_sent and self.receiver is not None:
                        self.receiver.received(None, text)
                elif opcode == PING:
                    if not self.gone:
                        self.transport.write(pong_frame(payload))
                elif opcode == CLOSE:
                    self._close_received(payload)
                    return
                # PONG: hearing it is all the liveness sweep needs
        except FrameError as exc:
            self._fail(exc)

    def _close_received(self, payload: bytes) -> None:
        code, _ = parse_close(payload)
        if self.close_sent:  # the client answered our close: the handshake is complete
            self.transport.close()
            return
        self.close_sent = True
        self.ready = False
        self.transport.write(close_frame(code))
        self.transport.close()
        self._tell_closed()

    def _fail(self, error: FrameError) -> None:
        """The client broke the protocol: close with the code that says how.

        The close frame is followed by the end of the edge's side of the stream; what the
        client still sends is read and discarded until it ends its side too (or
        `CLOSE_TIMEOUT`), so the close is not lost to a reset of unread data."""
        log.debug("closing a signaling socket: %s", error)
        self.reader = None
        if not self.gone:
            self.transport.write(close_frame(error.code, error.reason))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.resume_reading()
                self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.close)
            else:
                self.transport.close()
        self.close_sent = True
        self.ready = False
        self._tell_closed()

    def _tell_closed(self) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.socket_closed()

    def pause_reading(self) -> None:
        """Read nothing more until `resume_reading` (the receiver is behind)."""
        if not self._reading_paused and not self.gone:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and not self.lost:
            self._reading_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ writing (FrameSink)

    @property
    def gone(self) -> bool:
        return self.close_sent or self.lost or self.transport.is_closing()

    def write(self, frame: bytes) -> None:
        self.wrote = True
        self.transport.write(frame)

    def close(self, code: int, reason: str) -> None:
        """Send the close frame; the TCP side closes when the client answers it (or after
        `CLOSE_TIMEOUT`). Frames the client still sends meanwhile are ignored."""
        if self.gone:
            return
        self.close_sent = True
        self.ready = False
        self.transport.write(close_frame(code, reason))
        self.resume_reading()  # to read the answer
        self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.close)

    def drop(self) -> None:
        self.ready = False
        self.transport.abort()

    def ping(self) -> None:
        self.pinged = True
        if not self.gone:
            self.transport.write(PING_FRAME)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.ready = False

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.ready = not self.gone
        if self.on_writable is not None:
            self.on_writable()

    # ------------------------------------------------------------------ the end

    def eof_received(self) -> bool:
        return False  # the client ended its side: close ours too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.ready = False
        self._watched.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        on_lost, self._on_lost = self._on_lost, None
        try:
            if on_lost is not None:
                on_lost()
            self._tell_closed()
        finally:
            on_writable, self.on_writable = self.on_writable, None
            if on_writable is not None:
                on_writable()  # the queue learns that the socket is gone


class Liveness:
    """The edge-wide liveness sweep over its signaling sockets (the module docstring).

    Every `tick` seconds each socket is looked at once: any bytes from the peer (a pong,
    a frame) count as life; a socket silent for `interval` seconds gets an empty ping
    (every client answers it: RFC 6455 requires a pong), one silent for `timeout` seconds
    is taken for dead and aborted (its session sees the socket drop). The edge's own lag
    is not the client's fault: `timeout` is extended by the seconds the loop ran late in
    the last `timeout` seconds (`lag`, probed every `LAG_PROBE_S`), since a pong that
    arrived then waited unread in the kernel.

    A frame written to a socket (seen by the sweep after it) vouches for it as a frame
    heard would, for up to `recheck - interval` seconds past what was last heard: the
    socket's ``TCP_USER_TIMEOUT`` is `timeout`, so a peer whose host is gone ends the
    connection within `timeout` of the first write it does not acknowledge. A peer whose
    host acknowledges but whose application stopped is pinged once silent `recheck`
    seconds and dropped `timeout - interval` later. So a dead peer is found within
    `interval + timeout` (plus a tick and the loop's lag) when nothing is written to it,
    and within `timeout` of the next write, at most `recheck + timeout - interval`, when
    frames are.
    """

    def __init__(
        self, metrics: EdgeMetrics, interval: float, timeout: float, recheck: float = 0.0
    ) -> None:
        if not 0 < interval < timeout:
            raise ValueError("need 0 < interval < timeout")
        recheck = recheck or interval
        if recheck < interval:
            raise ValueError("need recheck >= interval (or 0: writes do not vouch)")
        self.metrics = metrics
        self.interval = interval
        self.timeout = timeout
        self.vouch = recheck - interval
        """Seconds past the last frame heard that a frame written may vouch for a socket."""
        self.tick = min(interval, timeout - interval) / 2
        self.sockets: set[RtcSocket] = set()
        """Every open signaling socket (each adds itself, and leaves when it is lost)."""
        self.lag = LoopLag(timeout)
        self._timer: asyncio.TimerHandle | None = None
        self._probe: asyncio.TimerHandle | None = None
        self._probe_due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listener_watched = False
        """Whether the edge's one listening socket has the ``TCP_USER_TIMEOUT`` (set by
        `watch_listener` before it listened): Linux copies it to every socket accepted from
        it, so `watch_writes` has nothing to set (a system call per socket fewer)."""
        metrics.loop_lag = lambda: self.lag.max_recent

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = loop.call_later(self.tick, self.sweep)
        self._probe_due = loop.time() + LAG_PROBE_S
        self._probe = loop.call_at(self._probe_due, self._probed)

    def stop(self) -> None:
        for handle in (self._timer, self._probe):
            if handle is not None:
                handle.cancel()
        self._timer = self._probe = None
        self._loop = None

    def _probed(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        self.lag.record(now, now - self._probe_due)
        self._probe_due = now + LAG_PROBE_S
        self._probe = loop.call_at(self._probe_due, self._probed)

    def watch_listener(self, sock: tcp.socket) -> None:
        """Give `sock`, the edge's listening socket, before it listens, the
        ``TCP_USER_TIMEOUT`` that `watch_writes` gives each socket: Linux copies a listener's
        option to every socket accepted from it (at the handshake; so it must be set before
        the first one). Sets `listener_watched` when it took; otherwise (not Linux, not TCP)
        each accepted socket still gets it from `watch_writes`."""
        if self.vouch <= 0 or not hasattr(tcp, "TCP_USER_TIMEOUT"):
            return
        try:
            sock.setsockopt(tcp.IPPROTO_TCP, tcp.TCP_USER_TIMEOUT, int(self.timeout * 1000))
        except OSError:
            return
        self.listener_watched = True

    def watch_writes(self, transport: asyncio.BaseTransport) -> None:
        """Let TCP end `transport`'s connection when what is written to it stays
        unacknowledged for `timeout` (only when writes vouch for sockets); a no-op when the
        socket has it from the listener (`watch_listener`)."""
        if self.listener_watched:
            return
        sock = transport.get_extra_info("socket") if self.vouch > 0 else None
        if sock is not None and hasattr(tcp, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):  # not TCP (a Unix socket): pings alone then
                sock.setsockopt(tcp.IPPROTO_TCP, tcp.TCP_USER_TIMEOUT, int(self.timeout * 1000))

    def behind(self, now: float) -> float:
        """Seconds the edge's loop ran late in the last `LAG_RECENT_S`, or is running late
        now (the probe overdue): the largest. `now` is the loop's time."""
        overdue = now - self._probe_due if self._probe is not None else 0.0
        return max(overdue, self.lag.recent(now, LAG_RECENT_S))

    def close_all(self) -> int:
        """Abort every socket still open (the edge is stopping); returns how many."""
        sockets, self.sockets = self.sockets, set()
        for socket in sockets:
            socket.drop()
        return len(sockets)

    def sweep(self) -> None:
        """Ping the quiet sockets, drop the silent ones, and schedule the next sweep."""
        loop = self._loop
        if loop is None:
            return
        # The next sweep first: a socket that fails to drop must not end the sweeps.
        self._timer = loop.call_later(self.tick, self.sweep)
        if self._probe is not None and self._probe_due < loop.time():
            self._probe.cancel()  # overdue too: take its delay in before judging anyone
            self._probed()
        now = loop.time()
        stalled = self.lag.stalled(now)
        quiet, dead = now - self.interval, now - self.timeout - stalled
        vouch = self.vouch
        dropped = 0
        for socket in list(self.sockets):
            heard = socket.last_heard
            if socket.wrote:
                socket.wrote = False
                socket.last_written = now
            if vouch:  # what TCP watches: written, within `vouch` of the last frame heard
                heard = max(heard, min(socket.last_written, heard + vouch))
            if heard > quiet:
                continue
            if heard <= dead:
                dropped += 1
                self.sockets.discard(socket)
                socket.drop()
            elif not socket.pinged:
                socket.ping()
        if dropped:
            # One line per sweep, not per socket: a mass drop (a client host gone) is then
            # visible in the log, with the loop's lag it was forgiven.
            self.metrics.liveness_drops += dropped
            log.warning(
                "dropped %d signaling socket(s) silent for %g s (no pong to a ping; the "
                "edge's loop ran %.1f s late meanwhile, forgiven); %d open",
                dropped,
                self.timeout,
                stalled,
                len(self.sockets),
            )


__all__ = ["CLOSE_TIMEOUT", "LAG_RECENT_S", "Liveness", "RtcReceiver", "RtcSocket"]
