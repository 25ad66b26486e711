"""Simulcast in SDP (RFC 8853 ``a=simulcast``, RFC 8851 ``a=rid``): read an offer, answer it.

aiortc's SDP parser and writer know neither attribute, so the forwarder reads the rids a
publisher's offer sends per m-section here and adds the receiving side to the answer text
aiortc made (``a=rid:<rid> recv`` lines and ``a=simulcast:recv``). Only the layer rids the
forwarder understands (``q``, ``h``, ``f``) are accepted; an offer that sends no such rid
gets a plain single-layer answer. Pure text in, text out.

The answer also gives each simulcast section's codec an ``x-google-start-bitrate`` (what
Chromium's bandwidth estimate starts from). Without transport-wide feedback (which aiortc
lacks) Chromium's estimate grows some 8 % a second from 300 kbit/s, so the full layer would
wait some 20 s; starting at `START_BITRATE_KBPS` it sends every layer at once where the
link carries them, and backs off on loss as usual where it does not.
"""

from __future__ import annotations

from collections.abc import Mapping

from forwarder.simulcast import LAYER_RIDS

START_BITRATE_KBPS = 1500
"""Covers layers q and h and the full layer's lowest rate (forwarder.layers bitrates)."""


def _sections(sdp: str) -> list[list[str]]:
    """The session part, then one list of lines per m-section (line endings stripped)."""
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        if line:
            sections[-1].append(line)
    return sections


def _mid(section: list[str]) -> str | None:
    for line in section:
        if line.startswith("a=mid:"):
            return line[len("a=mid:") :].strip()
    return None


def offered_simulcast(offer_sdp: str) -> dict[str, tuple[str, ...]]:
    """Per MID, the layer rids an offer sends as simulcast (in the offer's order).

    Reads ``a=simulcast:send``: alternatives (``q,x``) count by their first rid, a paused
    rid (``~f``) counts as offered, and rids other than q/h/f are left out; a section
    whose simulcast names no such rid is absent from the result.
    """
    result: dict[str, tuple[str, ...]] = {}
    for section in _sections(offer_sdp)[1:]:
        mid = _mid(section)
        declared = {
            line[len("a=rid:") :].split()[0]
            for line in section
            if line.startswith("a=rid:") and line.split()[1:2] == ["send"]
        }
        for line in section:
            if not line.startswith("a=simulcast:"):
                continue
            words = line[len("a=simulcast:") :].split()
            if len(words) < 2 or words[0] != "send":
                continue
            rids = []
            for stream in words[1].split(";"):
                rid = stream.split(",")[0].lstrip("~")
                if rid in LAYER_RIDS and rid in declared and rid not in rids:
                    rids.append(rid)
            if mid is not None and rids:
                result[mid] = tuple(rids)
    return result


def answer_simulcast(
    answer_sdp: str,
    offered: Mapping[str, tuple[str, ...]],
    *,
    start_bitrate_kbps: int = START_BITRATE_KBPS,
) -> str:
    """`answer_sdp` with each offered MID's rids received as simulcast.

    The lines go right after the m-section's ``a=mid`` line, and the section's codecs
    (not RTX) get ``x-google-start-bitrate``; sections not in `offered` are unchanged, as
    is the answer when `offered` is empty.
    """
    if not offered:
        return answer_sdp
    out: list[str] = []
    for section in _sections(answer_sdp):
        mid = _mid(section)
        rids = offered.get(mid) if mid is not None else None
        if rids:
            section = _with_start_bitrate(section, start_bitrate_kbps)
        for line in section:
            out.append(line)
            if rids and line.startswith("a=mid:"):
                out.extend(f"a=rid:{rid} recv" for rid in rids)
                out.append("a=simulcast:recv " + ";".join(rids))
    return "\r\n".join(out) + "\r\n"


def _with_start_bitrate(section: list[str], kbps: int) -> list[str]:
    codecs = [
        line[len("a=rtpmap:") :].split()[0]
        for line in section
        if line.startswith("a=rtpmap:") and "rtx/" not in line.lower()
    ]
    param = f"x-google-start-bitrate={kbps}"
    out: list[str] = []
    with_fmtp = {
        line[len("a=fmtp:") :].split()[0] for line in section if line.startswith("a=fmtp:")
    }
    for line in section:
        if line.startswith("a=fmtp:") and line[len("a=fmtp:") :].split()[0] in codecs:
            line = f"{line};{param}"
        out.append(line)
        if line.startswith("a=rtpmap:"):
            pt = line[len("a=rtpmap:") :].split()[0]
            if pt in codecs and pt not in with_fmtp:
                out.append(f"a=fmtp:{pt} {param}")
    return out
