"""Whether this client can receive a subscribed track in the codec the forwarder offers.

The forwarder offers each subscribed track in the one codec its publisher sends, beside
companions (retransmission, redundancy, FEC) that carry nothing on their own. A client that
cannot decode that codec (aiortc has no VP9 or AV1; a browser without H.264, as Debian's
Firefox ESR) cannot answer the offer with anything useful: the subscriber would see nothing
and be told nothing. Checked against the receiver's capabilities before answering, the
mismatch becomes a named `track-subscription-failed` (reason `CODEC_UNSUPPORTED`) at once.
The browser SDK does the same in `edge/static/receivable.js`.
"""

from __future__ import annotations

from collections.abc import Iterable

CODEC_UNSUPPORTED = "CODEC_UNSUPPORTED"
"""The reason of a subscription whose codec this client cannot decode."""

COMPANIONS = frozenset({"rtx", "red", "ulpfec", "flexfec-03", "cn", "telephone-event"})
"""Codec names that only accompany a media codec (a receiver needs the media codec)."""


def offered_codecs(sdp: str) -> tuple[str, ...]:
    """The media codecs an SDP's m-lines carry as MIME types (`video/VP9`, `audio/opus`),
    in order and once each, companions left out."""
    kind = ""
    found: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=rtpmap:") and kind and " " in line:
            name = line.split(" ", 1)[1].split("/", 1)[0].strip()
            mime = f"{kind}/{name}"
            if name and name.lower() not in COMPANIONS and mime not in found:
                found.append(mime)
    return tuple(found)


def unreceivable(offered: Iterable[str], receivable: Iterable[str]) -> tuple[str, ...]:
    """The `offered` codecs when none of them is `receivable` (MIME types, any case): what
    this client cannot receive. Empty when one of them is, or nothing was offered."""
    offered = tuple(offered)
    can = {mime.lower() for mime in receivable}
    if not offered or any(mime.lower() in can for mime in offered):
        return ()
    return offered
