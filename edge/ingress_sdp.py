"""The edge's check of a WHIP offer before anything is appended (pure, no aiortc).

A WHIP client sends its whole offer in one POST. The edge reads only what it must know to
announce the tracks: the audio and video m-lines and their MIDs. An offer it cannot use is
`MalformedOffer` (answered 400 with its reason) before the session joins the room, so a
bad offer leaves nothing behind. The forwarder still applies the SDP for real and may
refuse it later (a codec it cannot forward, say); the edge then takes the session out.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from schemas.subjects import is_generated_id

MAX_OFFER_BYTES = 128 * 1024
"""The largest offer taken (the wire's SDP limit)."""


class MalformedOffer(ValueError):
    """A WHIP offer the edge cannot use; `reason` is what the 400 says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class OfferedMedia:
    """One m-line of the offer: its MID and kind."""

    mid: str
    kind: Literal["audio", "video"]


def offered_media(sdp: str) -> tuple[OfferedMedia, ...]:
    """The offer's audio and video m-lines, in order, or `MalformedOffer`.

    Required: an SDP session (``v=0`` first), at least one m-line, each of them audio or
    video with a port, a MID (``[A-Za-z0-9_-]+``, unique) and an ICE ufrag and DTLS
    fingerprint (in the section or for the session); at most one audio and one video.
    """
    lines = [line.rstrip("\r") for line in sdp.split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise MalformedOffer("not an SDP offer: it must start with v=0")
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise MalformedOffer(f"not an SDP line: {line[:60]!r}")
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    if not sections:
        raise MalformedOffer("the offer has no media (m=) lines")
    media: list[OfferedMedia] = []
    for section in sections:
        media.append(_section(section, session))
    kinds = [m.kind for m in media]
    if kinds.count("audio") > 1 or kinds.count("video") > 1:
        raise MalformedOffer(f"at most one audio and one video m-line, not {kinds}")
    mids = [m.mid for m in media]
    if len(set(mids)) != len(mids):
        raise MalformedOffer(f"duplicate MIDs {mids}")
    return tuple(media)


def _section(section: list[str], session: list[str]) -> OfferedMedia:
    fields = section[0][2:].split()
    if len(fields) < 4:
        raise MalformedOffer(f"a short m-line: {section[0][:60]!r}")
    kind = fields[0]
    if kind not in ("audio", "video"):
        raise MalformedOffer(f"only audio and video are published over WHIP, not {kind[:20]!r}")
    if not fields[1].isdigit():
        raise MalformedOffer(f"the {kind} m-line has no port")
    if "a=recvonly" in section or "a=inactive" in section:
        raise MalformedOffer(f"the {kind} m-line sends nothing (WHIP publishes)")
    mid = next((line[6:].strip() for line in section if line.startswith("a=mid:")), "")
    if not mid:
        raise MalformedOffer(f"the {kind} m-line has no a=mid")
    if not is_generated_id(mid) or len(mid) > 32:
        raise MalformedOffer(f"the MID {mid[:40]!r} is not [A-Za-z0-9_-]{{1,32}}")
    for attribute, what in (("a=ice-ufrag:", "ICE ufrag"), ("a=fingerprint:", "DTLS fingerprint")):
        if not any(line.startswith(attribute) for line in (*section, *session)):
            raise MalformedOffer(f"the {kind} m-line has no {what} ({attribute[:-1]})")
    return OfferedMedia(mid=mid, kind="audio" if kind == "audio" else "video")


def offer_ufrag(sdp: str) -> str:
    """The offer's (first) ICE ufrag: a trickled fragment with another one is a restart."""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line[len("a=ice-ufrag:") :].strip()
    return ""


MAX_TRICKLED = 64
"""Candidates one PATCH may carry."""


class MalformedFragment(ValueError):
    """A trickle-ICE fragment (``application/trickle-ice-sdpfrag``) the edge cannot use."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class TrickleFragment:
    """What a PATCH fragment carries (RFC 8840): the ICE credentials it names, and its
    candidates as (MID or None, ``candidate:...`` attribute value, or "" for the end)."""

    ufrag: str | None
    candidates: tuple[tuple[str | None, str], ...]


def trickle_fragment(text: str) -> TrickleFragment:
    """Parse a trickle-ICE SDP fragment, or `MalformedFragment`."""
    ufrag: str | None = None
    mid: str | None = None
    candidates: list[tuple[str | None, str]] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise MalformedFragment(f"not an SDP line: {line[:60]!r}")
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :].strip()
        elif line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :].strip()
        elif line.startswith("a=candidate:"):
            candidates.append((mid, line[2:]))
        elif line == "a=end-of-candidates":
            candidates.append((mid, ""))
    if len(candidates) > MAX_TRICKLED:
        raise MalformedFragment(f"over {MAX_TRICKLED} candidates in one fragment")
    return TrickleFragment(ufrag=ufrag, candidates=tuple(candidates))


__all__ = [
    "MAX_OFFER_BYTES",
    "MAX_TRICKLED",
    "MalformedFragment",
    "MalformedOffer",
    "OfferedMedia",
    "TrickleFragment",
    "offer_ufrag",
    "offered_media",
    "trickle_fragment",
]
