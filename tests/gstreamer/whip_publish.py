"""Publish VP8 and Opus over WHIP with GStreamer's webrtcbin (not aiortc).

Run with Debian's system Python, which has the GStreamer bindings (python3-gi):
``/usr/bin/python3 tests/gstreamer/whip_publish.py <whip url> <token>``. It builds a live
test-pattern (VP8) and tone (Opus) pipeline into a send-only webrtcbin, waits for ICE
gathering to complete, POSTs the offer, applies the answer, prints ``LOCATION <url>`` and
``STATE <connection state>`` lines as they happen, and runs until stdin closes or it is
terminated. ``--check`` only prints ``ok`` if every element it needs is installed.
"""

from __future__ import annotations

import signal
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

ELEMENTS = (
    "webrtcbin",
    "nicesrc",
    "videotestsrc",
    "vp8enc",
    "rtpvp8pay",
    "audiotestsrc",
    "opusenc",
    "rtpopuspay",
)

PIPELINE = (
    "webrtcbin name=webrtc bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! videoconvert ! vp8enc deadline=1 keyframe-max-dist=15 ! rtpvp8pay pt=96 "
    "! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! webrtc. "
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
    "! rtpopuspay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! webrtc. "
)


def say(line: str) -> None:
    print(line, flush=True)


class WhipPublisher:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.loop = GLib.MainLoop()
        self.pipeline: Any = Gst.parse_launch(PIPELINE)
        self.webrtc: Any = self.pipeline.get_by_name("webrtc")
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::connection-state", self.on_connection_state)
        self.webrtc.connect("on-ice-candidate", self.on_candidate)
        self.candidates: dict[int, list[str]] = {}
        self.offered = False
        self.offer: Any = None
        self.answer: Any = None
        self.posted = False

    def run(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)
        for index in range(2):
            transceiver = self.webrtc.emit("get-transceiver", index)
            if transceiver is not None:
                transceiver.set_property(
                    "direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
                )
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)

    def stop(self) -> None:
        GLib.idle_add(self.loop.quit)

    def on_negotiation_needed(self, element: Any) -> None:
        if not self.offered:
            self.offered = True
            GLib.idle_add(self.create_offer)  # on the main loop: the promise is waited there

    def create_offer(self) -> bool:
        promise = Gst.Promise.new()
        self.webrtc.emit("create-offer", None, promise)
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        if offer is None:
            say(f"FAILED create-offer: {reply.to_string()}")
            self.loop.quit()
            return False
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        self.offer = offer  # held: the description must outlive the call
        return False

    def on_gathering(self, element: Any, _spec: Any) -> None:
        state = element.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.posted:
            self.posted = True
            GLib.idle_add(self.post)

    def on_candidate(self, _element: Any, mline: int, candidate: str) -> None:
        self.candidates.setdefault(mline, []).append(candidate)

    def on_connection_state(self, element: Any, _spec: Any) -> None:
        state = element.get_property("connection-state")
        say(f"STATE {state.value_nick}")

    def post(self) -> bool:
        sdp = with_candidates(
            self.webrtc.get_property("local-description").sdp.as_text(), self.candidates
        )
        say(f"OFFER {sdp.count('a=candidate:')} candidates")
        request = urllib.request.Request(
            self.url,
            data=sdp.encode(),
            method="POST",
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/sdp"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, location = response.status, response.headers.get("location", "")
                answer = response.read().decode()
        except urllib.error.HTTPError as exc:
            say(f"REFUSED {exc.code} {exc.read().decode()[:500]}")
            self.loop.quit()
            return False
        if status != 201:
            say(f"REFUSED {status}")
            self.loop.quit()
            return False
        _result, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(
            GstWebRTC.WebRTCSDPType.ANSWER, message
        )
        promise = Gst.Promise.new()
        self.webrtc.emit("set-remote-description", description, promise)
        promise.wait()
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            say(f"FAILED set-remote-description: {reply.to_string()}")
        self.answer = description
        say(f"LOCATION {location}")
        return False


def with_candidates(sdp: str, candidates: dict[int, list[str]]) -> str:
    """The offer with the gathered candidates in each m-section (webrtcbin signals them
    instead of writing them into its local description)."""
    if "a=candidate:" in sdp:
        return sdp
    sections = sdp.replace("\r\n", "\n").split("\nm=")
    head, media = sections[0], sections[1:]
    out = [head]
    for index, section in enumerate(media):
        lines = [f"a={c}" for c in candidates.get(index, candidates.get(0, []))]
        out.append(section.rstrip("\n") + "\n" + "\n".join([*lines, "a=end-of-candidates"]))
    return "\r\nm=".join(part.replace("\n", "\r\n") for part in out) + "\r\n"


def main() -> int:
    Gst.init(None)
    if sys.argv[1:] == ["--check"]:
        missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
        say("ok" if not missing else f"missing {' '.join(missing)}")
        return 0 if not missing else 1
    url, token = sys.argv[1], sys.argv[2]
    publisher = WhipPublisher(url, token)

    def wait_for_stdin() -> None:
        sys.stdin.read()
        publisher.stop()

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: publisher.stop())
    publisher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
