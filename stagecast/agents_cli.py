"""`stagecast agent-worker`: run an agent worker from the shell.

``stagecast agent-worker --module my_agent:entrypoint --agent-name assistant`` imports
`entrypoint` (an async function of a `stagecast.agents.JobContext`) from the module
`my_agent` (the current directory is on the import path) and runs a `Worker` until Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
from typing import Any

from roomlog.connect import NatsAuth


def load_entrypoint(spec: str) -> Any:
    """`module:function` -> the function (`SystemExit` naming what is wrong)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--module: expected module:function, not {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"--module: cannot import {module_name!r}: {exc}") from None
    entrypoint = getattr(module, attr, None)
    if not callable(entrypoint):
        raise SystemExit(f"--module: {module_name} has no function {attr!r}")
    return entrypoint


def add_agent_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--module", required=True, help="module:function, the job entrypoint")
    parser.add_argument("--agent-name", default="assistant", help="the name jobs ask for")
    parser.add_argument("--capacity", type=int, default=16, help="jobs at once, at most")
    parser.add_argument("--worker-id", default=None, help="default: a new random id")
    parser.add_argument(
        "--no-auto-subscribe",
        action="store_true",
        help="join without subscribing to every track (the entrypoint picks)",
    )


def run_agent_worker(
    args: argparse.Namespace, url: str, nats_url: str, nats_auth: NatsAuth, key: str, secret: str
) -> int:
    from stagecast.agents import Worker

    entrypoint = load_entrypoint(args.module)
    worker = Worker(
        url,
        key,
        secret,
        agent_name=args.agent_name,
        entrypoint=entrypoint,
        nats_url=nats_url,
        nats_auth=nats_auth,
        capacity=args.capacity,
        worker_id=args.worker_id,
        auto_subscribe=not args.no_auto_subscribe,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with worker:
            print(f"agent worker {worker.worker_id} ({args.agent_name}) ready", flush=True)
            await stop.wait()

    asyncio.run(main())
    return 0
