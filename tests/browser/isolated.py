"""Run one browser scenario in a private network namespace, for tests/test_browser.py and
tests/test_firefox.py.

``unshare --net --pid`` (only loopback up) holds the whole run: the scenario's own stack,
its browsers and Python SDK peers. It keeps WebRTC on 127.0.0.1 and guarantees cleanup:
when the driver ends, the kernel ends every process in it. The scenario reports what it
saw as JSON (``OUT/result.json``), which the test judges.

Chromium, ``unshare`` and playwright-core are set up by ``make browser-deps`` (a
prerequisite of ``make test``). When one is missing the tests FAIL and say what to run:
the project installs them itself, so a skip would hide a broken set-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("STAGECAST_CHROMIUM", "/usr/bin/chromium")
SYSTEM_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
SCENARIO_TIMEOUT = 55.0


def _prerequisites(node_packages: tuple[str, ...]) -> list[str]:
    """The browser test set-up: the absolute commands to run a scenario with."""
    problems = []
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(
            f"Chromium is missing at {CHROMIUM}: run `make browser-deps` "
            "(apt-get install chromium) or set STAGECAST_CHROMIUM"
        )
    node = shutil.which("node")
    if node is None:
        problems.append("node (>= 20) is not on PATH: install Node.js")
    for package in node_packages:
        if not (BROWSER_DIR / "node_modules" / package / "package.json").is_file():
            problems.append(f"{package} is not installed: run `make browser-deps` (npm ci)")
    unshare = shutil.which("unshare", path=SYSTEM_PATH)
    ip = shutil.which("ip", path=SYSTEM_PATH)
    if unshare is None or ip is None:
        problems.append("`unshare` (util-linux) and `ip` (iproute2) are needed")
    elif subprocess.run([unshare, "--net", "true"], capture_output=True).returncode != 0:
        problems.append("`unshare --net` is not permitted here: run the tests as root")
    if problems:
        pytest.fail("browser tests cannot run:\n  " + "\n  ".join(problems), pytrace=False)
    assert unshare is not None and ip is not None
    return [unshare, ip]


def run_scenario(
    name: str,
    out: Path,
    *,
    module: str = "tests.browser.driver",
    node_packages: tuple[str, ...] = ("playwright-core",),
    network: str = "",
) -> dict[str, Any]:
    """Run one scenario of the driver `module` in a fresh network (and pid) namespace;
    its result (the test fails, with the output, when the scenario did). `network`: more
    `ip` arguments, one command a line, run in the namespace after loopback is up."""
    unshare, ip = _prerequisites(node_packages)
    command = [
        unshare,
        "--net",
        "--pid",
        "--fork",
        "--kill-child",  # if we are killed, so is the namespace (and all in it)
        "sh",
        "-c",
        " && ".join(
            f"{ip} {line.strip()}"
            for line in ["link set lo up", *network.splitlines()]
            if line.strip()
        )
        + ' && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        module,
        name,
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT
        )
        output = (done.stdout or "") + (done.stderr or "")
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        pytest.fail(f"scenario {name} ran over {SCENARIO_TIMEOUT} s\n{output[-6000:]}")
    result_file = out / "result.json"
    if not result_file.is_file():
        pytest.fail(f"scenario {name} wrote no result (exit {done.returncode})\n{output[-6000:]}")
    result: dict[str, Any] = json.loads(result_file.read_text())
    if not result.get("ok"):
        pytest.fail(f"scenario {name} failed:\n{result.get('error')}\n--- output\n{output[-6000:]}")
    result["output"] = output
    return result


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
