"""WHIP from a WebRTC stack that is not aiortc: GStreamer's webrtcbin publishes VP8 and Opus.

The publisher runs in Debian's system Python (the GStreamer bindings are not in the venv):
tests/gstreamer/whip_publish.py, a subprocess. An SDK subscriber in the room decodes its
video. Skipped, with the reason, only when GStreamer cannot be found (``make test``
installs it with apt-get).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.polling import eventually
from tests.stack_fixtures import WAIT, Stack, sdk_stack
from tests.test_media import Watcher

ROOM = "whip-gst"
SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).parent / "gstreamer" / "whip_publish.py"
PACKAGES = (
    "gstreamer1.0-plugins-bad gstreamer1.0-nice gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-base python3-gi gir1.2-gst-plugins-bad-1.0"
)


def _gstreamer_missing() -> str | None:
    """Why the GStreamer publisher cannot run here, or None."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON} (Debian's python3 with python3-gi)"
    check = subprocess.run(
        [SYSTEM_PYTHON, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        why = (check.stdout + check.stderr).strip().splitlines()[-1:] or ["no output"]
        return f"GStreamer WebRTC is not installed ({why[0]}); apt-get install {PACKAGES}"
    return None


MISSING = _gstreamer_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with sdk_stack(tmp_path, forwarders=1) as running:
        yield running


class GstPublisher:
    """The webrtcbin publisher subprocess and the lines it printed."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().strip())

    def said(self, prefix: str) -> str | None:
        return next((line for line in self.lines if line.startswith(prefix)), None)

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def test_gstreamer_webrtcbin_publishes_vp8_and_opus_over_whip(stack: Stack) -> None:
    base = stack.url.replace("ws://", "http://").rstrip("/")
    bob = await stack.join(stack.token("bob", ROOM))
    seen = Watcher(bob)
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        str(SCRIPT),
        f"{base}/whip",
        stack.token("obs", ROOM),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    publisher = GstPublisher(process)
    try:
        said = await eventually(
            lambda: publisher.said("LOCATION ") or publisher.said("REFUSED "),
            what="the WHIP answer",
            timeout=WAIT,
        )
        assert said is not None and said.startswith("LOCATION /whip/PA_"), said
        location = said.removeprefix("LOCATION ")
        await eventually(
            lambda: publisher.said("STATE connected"),
            what=f"webrtcbin connects (it said {publisher.lines})",
            timeout=WAIT,
        )
        await seen.more_frames("obs", "video", 10)
        await seen.more_frames("obs", "audio", 10)
        assert seen.sizes == {(320, 240)}
        assert bob.remote_participants["obs"].kind == "ingress"
        router = stack.forwarders["FW_0"].forwarder.router
        codecs = sorted(router.codec(t).mime_type.lower() for t in router.track_ids)
        assert codecs == ["audio/opus", "video/vp8"]
        left: list[str] = []
        bob.on("participant-left", lambda p: left.append(p.id))
        async with httpx.AsyncClient(base_url=base) as http:
            response = await http.delete(location)
        assert response.status_code == 200
        await eventually(lambda: left == ["obs"], what="the GStreamer ingress leaves", timeout=WAIT)
    finally:
        await seen.close()
        await publisher.close()
