"""The browser SDK and the demo page in Firefox ESR, with Chromium and Python SDK peers.

Each test runs one scenario of `tests/browser/firefox.py` in a private network namespace
(`tests/browser/isolated.py`): its own stack, Debian's ``firefox-esr`` driven by npm
``puppeteer-core`` over WebDriver BiDi (`tests/browser/run_firefox.mjs`), the system
Chromium where a scenario has Chromium pages, and Python SDK peers.

``make browser-deps`` installs firefox-esr and puppeteer-core. The tests skip, saying so,
only when no Firefox binary is found (a machine where apt-get could not install it); a
missing puppeteer-core fails them, as a missing Chromium fails the Chromium tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.browser.isolated import run_scenario

FIREFOX = os.environ.get("STAGECAST_FIREFOX", "/usr/bin/firefox-esr")
NETWORK = """
link add fx0 type veth peer name fx1
addr add 10.254.0.1/24 dev fx0
link set fx0 up
link set fx1 up
route add 8.8.8.8/32 dev fx0
"""
"""The namespace's network beyond loopback. Firefox (nICEr) finds its "default address"
with a UDP connect to 8.8.8.8 and gathers no ICE candidate at all when that fails (only
loopback: "failed to find default addresses"); a page that captures nothing (a
subscriber) offers that address only, never loopback. A veth pair with an address and a
route to 8.8.8.8 gives it 10.254.0.1; nothing leaves the namespace (the forwarder and the
Python peers gather that address too), and with no default route every other outside
address still fails at once (a default route would make the browsers' background
connections hang, which slows every page by seconds)."""

pytestmark = pytest.mark.skipif(
    not os.access(FIREFOX, os.X_OK),
    reason=f"Firefox ESR is not installed at {FIREFOX}: `make browser-deps` installs it "
    "(apt-get install firefox-esr), or set STAGECAST_FIREFOX",
)


def firefox_scenario(name: str, out: Path) -> dict[str, Any]:
    return run_scenario(
        name,
        out,
        module="tests.browser.firefox",
        node_packages=("playwright-core", "puppeteer-core"),
        network=NETWORK,
    )


@pytest.fixture(scope="module")
def meets_chromium(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Firefox and Chromium on the demo page in one room (run once for several tests)."""
    return firefox_scenario("firefox_meets_chromium", tmp_path_factory.mktemp("meets"))


@pytest.mark.timeout(70)
def test_firefox_publishes_and_chromium_and_python_decode(meets_chromium: dict[str, Any]) -> None:
    """Firefox's fake camera and microphone, published from the demo page, reach a Python
    SDK subscriber (decoded frames) and a Chromium page (decoded video, audio packets)."""
    result = meets_chromium
    assert result["published"] == ["audio", "video"], result
    assert result["python_video_frames"] >= 10, result
    width, height = result["python_video_size"]
    assert width > 0 and height > 0, result
    assert result["python_audio_frames"] >= 20, result
    assert "Fiona Firefox" in result["seen"]["chrome"]["remote_names"], result
    assert result["seen"]["chrome"]["video_frames_decoded"] > 5, result
    assert result["seen"]["chrome"]["tile_video_width"] > 0, result


@pytest.mark.timeout(70)
def test_firefox_plays_chromium(meets_chromium: dict[str, Any]) -> None:
    """A Chromium speaker's camera and microphone play in Firefox's demo page."""
    seen = meets_chromium["seen"]["firefox"]
    assert "Chrome Cam" in seen["remote_names"], seen
    assert seen["video_frames_decoded"] > 5 and seen["tile_video_width"] > 0, seen
    assert seen["audio_packets"] > 20, seen


@pytest.mark.timeout(70)
def test_data_messages_and_rpc_between_firefox_and_chromium(
    meets_chromium: dict[str, Any],
) -> None:
    """Data messages go Firefox -> Chromium and Python, Chromium and Python -> Firefox;
    an RPC each way between the two browsers."""
    result = meets_chromium
    firefox, chrome = result["firefox_id"], result["chrome_id"]
    at_firefox = {(m["sender"], m["text"]) for m in result["data"]["firefox"]}
    at_chrome = {(m["sender"], m["text"]) for m in result["data"]["chrome"]}
    assert {(chrome, "from chromium"), ("py-subscriber", "from python")} <= at_firefox, result
    assert (firefox, "from firefox") in at_chrome, result
    assert [firefox, "from firefox"] in result["data_at_python"], result
    assert result["rpc"] == {"firefox_to_chrome": "ff!", "chrome_to_firefox": "cr!"}, result


@pytest.mark.timeout(70)
def test_firefox_leaves_and_the_others_see_it(meets_chromium: dict[str, Any]) -> None:
    """The Leave button in Firefox: the Chromium page drops its tile, the Python peer hears
    `participant-left`, and Firefox's page is back at its join form."""
    result = meets_chromium
    assert result["chrome_after_leave"] is True, result
    assert result["firefox_back_at_join"] is True, result
    assert result["firefox_id"] in result["left_at_python"], result


@pytest.fixture(scope="module")
def simulcast(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Simulcast published by Firefox and by Chromium in one room (run once)."""
    return firefox_scenario("firefox_simulcast", tmp_path_factory.mktemp("simulcast"))


@pytest.mark.timeout(70)
def test_firefox_publishes_three_layers_that_a_subscriber_switches(
    simulcast: dict[str, Any],
) -> None:
    """Firefox's simulcast offer (RFC 8853 ``a=simulcast:send q;h;f``) is answered with its
    three rids; a Python subscriber's leg goes down to q and back up, and while only q is
    wanted Firefox stops sending h (dynacast), then sends it again. Its full layer waits
    for Firefox's bandwidth estimate (docs/browser.md), so "up" is h or f."""
    published = simulcast["published"]
    assert "a=simulcast:send q;h;f" in published["offered"], published
    assert {"a=rid:q send", "a=rid:h send", "a=rid:f send"} <= set(published["offered"])
    first, low, high = published["widths"]
    assert first >= 640 and low <= 400 and high >= 640, published
    assert published["h_paused"] is True, published
    assert published["switches"] >= 2, published


@pytest.mark.timeout(70)
def test_firefox_plays_chromium_simulcast_and_follows_a_switch(
    simulcast: dict[str, Any],
) -> None:
    """A Firefox viewer decodes a Chromium camera's full layer, then low, then full again."""
    viewer = simulcast["viewer"]
    full, low, full_again = viewer["widths"]
    assert full > 0 and low <= 400 and full_again >= 1000, viewer
    assert viewer["codec"] == "video/VP8" and viewer["frames"] > 0, viewer


@pytest.mark.timeout(70)
def test_codecs_between_firefox_and_chromium(tmp_path: Path) -> None:
    """Per the SDK's `codec` option, Firefox sends that codec, the forwarder carries it as
    sent and a Chromium page decodes it; Chromium's VP9 and AV1 play in Firefox. H.264
    comes from the OpenH264 plugin, which Firefox downloads itself (never, offline, as in
    CI): without it Firefox cannot send H.264 and the SDK says so with a TypeError,
    publishing nothing."""
    result = firefox_scenario("firefox_codecs", tmp_path)
    codecs = result["codecs"]
    expected = {"default": "video/VP8", "vp8": "video/VP8", "vp9": "video/VP9", "av1": "video/AV1"}
    if "video/H264" in result["firefox_video_codecs"]:
        expected["h264"] = "video/H264"
    else:
        assert codecs["h264"] == {
            "error": "TypeError: publish: this browser cannot send h264",
            "tracks": 0,
        }, codecs
    for name, mime in expected.items():
        assert_carried(codecs[name], mime)
    for name, mime in {"vp9": "video/VP9", "av1": "video/AV1"}.items():
        assert_carried(result["to_firefox"][name], mime)


def assert_carried(seen: dict[str, Any], mime: str) -> None:
    """Sent, forwarded and decoded in `mime`, and decoding."""
    assert "error" not in seen, seen
    assert (seen["sent"], seen["forwarded"], seen["decoded"]) == (mime, mime, mime), seen
    assert seen["frames_decoded"] > 5 and seen["width"] > 0, seen


@pytest.mark.timeout(70)
def test_firefox_without_h264_hears_at_once_that_it_cannot_receive_an_h264_camera(
    tmp_path: Path,
) -> None:
    """Debian's Firefox ESR cannot decode H.264 (no OpenH264 offline): subscribed to an
    H.264 camera it gets `track-subscription-failed` (CODEC_UNSUPPORTED) at once, and the
    microphone beside it plays on."""
    result = firefox_scenario("firefox_no_h264", tmp_path)
    kinds = {m["kind"] for m in result["media"]}
    if "video/H264" in result["receivable"]:
        assert result["failures"] == [] and kinds == {"audio", "video"}, result
        return
    assert [(f["trackSid"], f["reason"], f["codecs"]) for f in result["failures"]] == [
        (result["track"], "CODEC_UNSUPPORTED", ["video/H264"])
    ], result
    assert kinds == {"audio"}, result
