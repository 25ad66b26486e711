"""The SDK ends quietly however a script ends: after leaving, after an error, or by just
returning from `asyncio.run` while joined (no "Task was destroyed", no aclose() errors)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.stack_fixtures import API_KEY, API_SECRET, sdk_stack

SCRIPT = """
import asyncio, os, sys
from aiortc.mediastreams import VideoStreamTrack
import stagecast

URL = os.environ["STAGECAST_URL"]
KEY, SECRET = os.environ["STAGECAST_API_KEY"], os.environ["STAGECAST_API_SECRET"]


async def main(mode):
    token = stagecast.generate_token(KEY, SECRET, room_id="demo", is_viewer=True)
    room = await stagecast.join(URL, token)
    if mode == "refused":  # a viewer may not publish: the error ends the script
        await room.local_participant.publish(VideoStreamTrack())
    if mode == "raise":
        raise RuntimeError("the application failed")
    if mode == "leave":
        await room.leave()


asyncio.run(main(sys.argv[1]))
"""

NOISE = ("Task was destroyed", "aclose()", "was never awaited", "Exception ignored", "Unclosed")


@pytest.mark.timeout(120)
async def test_every_way_of_ending_a_script_is_quiet(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    async with sdk_stack(tmp_path, forwarders=0) as stack:
        env = {
            **os.environ,
            "STAGECAST_URL": stack.url,
            "STAGECAST_API_KEY": API_KEY,
            "STAGECAST_API_SECRET": API_SECRET,
        }
        expected = {"refused": "InvalidPermissions", "raise": "the application failed"}
        for mode in ("refused", "raise", "leave", "return"):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-X",
                "dev",
                str(script),
                mode,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _out, err = await asyncio.wait_for(proc.communicate(), 60)
            stderr = err.decode()
            assert proc.returncode == (1 if mode in expected else 0), (mode, stderr[-3000:])
            if mode in expected:
                assert expected[mode] in stderr and stderr.count("Traceback") == 1, stderr
            else:
                assert "Traceback" not in stderr, (mode, stderr[-3000:])
            for noise in NOISE:
                assert noise not in stderr, (mode, noise, stderr[-3000:])
