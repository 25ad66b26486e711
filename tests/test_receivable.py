"""Whether a subscriber can receive the codec it is offered: the pure cores of both SDKs
(stagecast/client/receivable.py, edge/static/receivable.js) on the same SDPs agree."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.page import STATIC_DIR
from stagecast.client.receivable import offered_codecs, unreceivable

H264_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 102 103",
        "a=mid:0",
        "a=sendonly",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:103 rtx/90000",
        "a=fmtp:103 apt=102",
        "",
    ]
)
RED_OFFER = "\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 63 111",
        "a=rtpmap:63 red/48000/2",
        "a=rtpmap:111 opus/48000/2",
        "",
    ]
)
CHROMIUM = ["video/VP8", "video/rtx", "video/H264", "video/VP9", "video/AV1", "video/red"]
FIREFOX_ESR = ["video/VP8", "video/rtx", "video/VP9", "video/AV1", "video/ulpfec", "video/red"]
AIORTC_AUDIO = ["audio/opus", "audio/PCMU", "audio/PCMA"]


def test_the_offered_codecs_leave_their_companions_out() -> None:
    assert offered_codecs(H264_OFFER) == ("video/H264",)
    assert offered_codecs(RED_OFFER) == ("audio/opus",)
    assert offered_codecs("v=0\r\n") == ()


def test_a_codec_is_unreceivable_only_when_nothing_offered_is_receivable() -> None:
    assert unreceivable(("video/H264",), FIREFOX_ESR) == ("video/H264",)
    assert unreceivable(("video/H264",), CHROMIUM) == ()
    assert unreceivable(("video/h264",), ["VIDEO/H264"]) == ()  # MIME types ignore case
    assert unreceivable(("audio/opus",), AIORTC_AUDIO) == ()
    assert unreceivable((), FIREFOX_ESR) == ()  # nothing offered: nothing to refuse


def test_the_browser_sdk_agrees(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (>= 20) is not on PATH: install Node.js")
    module = json.dumps((STATIC_DIR / "receivable.js").as_uri())
    cases = {"h264": H264_OFFER, "red": RED_OFFER, "firefox": FIREFOX_ESR, "chrome": CHROMIUM}
    answer = H264_OFFER.replace("m=video 9 ", "m=video 0 ")
    script = tmp_path / "receivable.mjs"
    script.write_text(
        f"import * as r from {module};\n"
        f"const c = {json.dumps(cases)};\n"
        "process.stdout.write(JSON.stringify({\n"
        "  offered: [r.offeredCodecs(c.h264), r.offeredCodecs(c.red)],\n"
        "  firefox: r.unreceivable(r.offeredCodecs(c.h264), c.firefox),\n"
        "  chrome: r.unreceivable(r.offeredCodecs(c.h264), c.chrome),\n"
        "  unknown: r.unreceivable(['video/H264'], null),\n"
        f"  rejects: [r.rejectsMedia({json.dumps(answer)}), r.rejectsMedia(c.h264)],\n"
        "  noBrowser: r.receivableCodecs('video'),\n"
        "}));\n"
    )
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "offered": [list(offered_codecs(H264_OFFER)), list(offered_codecs(RED_OFFER))],
        "firefox": ["video/H264"],
        "chrome": [],
        "unknown": [],  # a browser that cannot tell its capabilities is never refused
        "rejects": [True, False],
        "noBrowser": None,  # node has no RTCRtpReceiver
    }
