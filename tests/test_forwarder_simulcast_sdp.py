"""Simulcast in SDP: the rids an offer sends, and the answer that receives them."""

from __future__ import annotations

from forwarder.simulcast_sdp import answer_simulcast, offered_simulcast

# What Chromium offers for a camera published with sendEncodings q/h/f (trimmed).
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send",
        "a=simulcast:send q;h;~f",
        "",
    ]
)

ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 3 4 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=recvonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98",
        "a=mid:1",
        "a=recvonly",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:98 H264/90000",
        "a=fmtp:98 packetization-mode=1",
        "",
    ]
)


def test_the_offered_layers_per_mid() -> None:
    assert offered_simulcast(OFFER) == {"1": ("q", "h", "f")}


def test_unknown_undeclared_and_receive_rids_are_left_out() -> None:
    odd = OFFER.replace("a=simulcast:send q;h;~f", "a=simulcast:send lo,q;x;h")
    assert offered_simulcast(odd) == {"1": ("h",)}  # lo is unknown, x undeclared
    undeclared = OFFER.replace("a=rid:h send", "a=rid:h recv")
    assert offered_simulcast(undeclared) == {"1": ("q", "f")}
    recv = OFFER.replace("a=simulcast:send", "a=simulcast:recv")
    assert offered_simulcast(recv) == {}
    assert offered_simulcast(OFFER.replace("a=simulcast:send q;h;~f\r\n", "")) == {}


def test_the_answer_receives_the_offered_rids_in_their_section() -> None:
    answer = answer_simulcast(ANSWER, offered_simulcast(OFFER))
    lines = answer.split("\r\n")
    at = lines.index("a=mid:1")
    assert lines[at + 1 : at + 5] == [
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
    ]
    assert answer.count("a=rid:") == 3
    assert answer_simulcast(ANSWER, {}) == ANSWER


def test_the_answer_starts_the_simulcast_codecs_bandwidth_estimate_high() -> None:
    lines = answer_simulcast(ANSWER, {"1": ("q", "h")}, start_bitrate_kbps=1200).split("\r\n")
    assert (
        lines[lines.index("a=rtpmap:96 VP8/90000") + 1] == "a=fmtp:96 x-google-start-bitrate=1200"
    )
    assert "a=fmtp:98 packetization-mode=1;x-google-start-bitrate=1200" in lines
    assert "a=fmtp:97 apt=96" in lines  # RTX is left alone
    assert sum("x-google-start-bitrate" in line for line in lines) == 2
