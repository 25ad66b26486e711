"""The README's quick start, run as a newcomer would run it: against a running stack."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.stack_fixtures import API_KEY, API_SECRET, Stack, sdk_stack

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.timeout(120)


def quick_start_python() -> str:
    """The Python block of the README's "Quick start" section."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the quick start has no Python block"
    return found.group(1)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, forwarders=1) as running:
        yield running


async def test_the_quick_start_promotes_a_viewer_that_then_publishes(
    stack: Stack, tmp_path: Path
) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quick_start_python())
    env = {
        **os.environ,
        "STAGECAST_URL": stack.url,
        "STAGECAST_API_KEY": API_KEY,
        "STAGECAST_API_SECRET": API_SECRET,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "dev",  # asyncio debug: a task destroyed pending or a never-awaited coroutine shows
        str(script),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stderr[-4000:]
    assert "speaker on stage: viewer-1" in stdout, stdout
    assert "host receives video from viewer-1" in stdout, stdout
    for noise in ("Task was destroyed", "was never awaited", "Traceback", "aclose()"):
        assert noise not in stderr, stderr[-4000:]
