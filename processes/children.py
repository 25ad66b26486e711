"""Child processes of `stagecast up` and the benchmarks: started to die with their parent."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from processes.natsserver import death_signal_setter

CLI: tuple[str, ...] = (sys.executable, "-P", "-m", "stagecast.cli")
"""How a parent runs a `stagecast` command as its child: this interpreter, with `-P` so that
the working directory is not put first on the child's `sys.path`. Without it a directory
holding a folder named like one of Stagecast's packages (`schemas/`, `edge/`, a checkout)
shadows the installed code, and a tree named by `PYTHONPATH` (a benchmark's A/B against
another commit) loses to the checkout the command was started from."""


def spawn_child(
    args: Sequence[str], *, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start a child whose output goes to `log_path` and that dies if we die."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            preexec_fn=death_signal_setter(),
            close_fds=True,
        )


async def wait_exit(child: subprocess.Popen[bytes]) -> int:
    """Wait for a child to exit without blocking the event loop."""
    while child.poll() is None:
        await asyncio.sleep(0.1)
    return child.returncode


async def until_stopped_or_exited(
    stop: asyncio.Event, children: list[subprocess.Popen[bytes]]
) -> bool:
    """Wait until `stop` is set or any child exits; True when a child exited first."""
    waiters = [asyncio.ensure_future(stop.wait())] + [
        asyncio.ensure_future(wait_exit(child)) for child in children
    ]
    _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return not stop.is_set()


async def stop_child(child: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`. Idempotent."""
    if child.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(wait_exit(child), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await wait_exit(child)
