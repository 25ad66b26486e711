"""The edge's pure checks of WHIP offers and trickle-ICE fragments (edge/ingress_sdp.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edge.ingress_sdp import (
    MAX_TRICKLED,
    MalformedFragment,
    MalformedOffer,
    OfferedMedia,
    offer_ufrag,
    offered_media,
    trickle_fragment,
)

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE v a",
        "a=fingerprint:sha-256 AB:CD",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:v",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:secretsecretsecret",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:a",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:secretsecretsecret",
        "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
        "",
    ]
)


def test_an_offer_lists_its_audio_and_video_in_order() -> None:
    assert offered_media(OFFER) == (OfferedMedia("v", "video"), OfferedMedia("a", "audio"))
    assert offer_ufrag(OFFER) == "abcd"


def test_one_kind_alone_is_fine() -> None:
    video_only = OFFER.split("m=audio")[0]
    assert offered_media(video_only) == (OfferedMedia("v", "video"),)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: "hello", "must start with v=0"),
        (lambda s: s.split("m=")[0], "no media"),
        (lambda s: s.replace("a=mid:a", "a=xmid:a"), "has no a=mid"),
        (lambda s: s.replace("a=mid:a", "a=mid:v"), "duplicate MIDs"),
        (lambda s: s.replace("a=mid:a", "a=mid:a.b"), "is not [A-Za-z0-9_-]"),
        (lambda s: s.replace("m=audio", "m=video"), "at most one audio and one video"),
        (lambda s: s.replace("m=audio 9", "m=application 9"), "not 'application'"),
        (lambda s: s.replace("m=audio 9", "m=audio x"), "has no port"),
        (lambda s: s.replace("a=fingerprint:sha-256 AB:CD", "a=x:y"), "DTLS fingerprint"),
        (lambda s: s.replace("a=ice-ufrag:abcd\r\n", ""), "ICE ufrag"),
        (lambda s: s.replace("a=sendonly", "a=recvonly"), "sends nothing"),
        (lambda s: s.replace("s=-", "nonsense"), "not an SDP line"),
    ],
)
def test_an_unusable_offer_says_why(change: Callable[[str], str], reason: str) -> None:
    with pytest.raises(MalformedOffer) as caught:
        offered_media(change(OFFER))
    assert reason in caught.value.reason


def test_a_fragment_gives_its_ufrag_and_candidates_by_mid() -> None:
    fragment = trickle_fragment(
        "a=ice-ufrag:abcd\r\na=ice-pwd:secret\r\nm=audio 9 RTP/AVP 0\r\na=mid:v\r\n"
        "a=candidate:1 1 UDP 2122252543 192.0.2.1 50000 typ host\r\na=end-of-candidates\r\n"
    )
    assert fragment.ufrag == "abcd"
    assert fragment.candidates == (
        ("v", "candidate:1 1 UDP 2122252543 192.0.2.1 50000 typ host"),
        ("v", ""),
    )


def test_a_fragment_without_credentials_or_mid_is_read_as_it_is() -> None:
    fragment = trickle_fragment("a=candidate:1 1 UDP 1 192.0.2.1 1 typ host\n")
    assert fragment.ufrag is None
    assert fragment.candidates == ((None, "candidate:1 1 UDP 1 192.0.2.1 1 typ host"),)


def test_a_bad_fragment_is_refused() -> None:
    with pytest.raises(MalformedFragment, match="not an SDP line"):
        trickle_fragment("candidate without a=")
    many = "a=candidate:1 1 UDP 1 192.0.2.1 1 typ host\n" * (MAX_TRICKLED + 1)
    with pytest.raises(MalformedFragment, match="over 64 candidates"):
        trickle_fragment(many)
