"""Simulcast in SDP (RFC 8853 ``a=simulcast``, RFC 8851 ``a=rid``): read an offer, answer it.

aiortc's SDP parser and writer know neither attribute, so the forwarder reads the rids a
publisher's offer sends per m-section here and adds the receiving side to the answer text
aiortc made (``a=rid:<rid> recv`` lines and ``a=simulcast:recv``). Only the layer rids the
forwarder understands (``q``, ``h``, ``f``) are accepted; an offer that sends no such rid
gets a plain single-layer answer. Pure text in, text out.
"""

from __future__ import annotations

from collections.abc import Mapping

from forwarder.simulcast import LAYER_RIDS


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


def answer_simulcast(answer_sdp: str, offered: Mapping[str, tuple[str, ...]]) -> str:
    """`answer_sdp` with each offered MID's rids received as simulcast.

    The lines go right after the m-section's ``a=mid`` line; sections not in `offered` are
    unchanged, as is the answer when `offered` is empty.
    """
    if not offered:
        return answer_sdp
    out: list[str] = []
    for section in _sections(answer_sdp):
        mid = _mid(section)
        rids = offered.get(mid) if mid is not None else None
        for line in section:
            out.append(line)
            if rids and line.startswith("a=mid:"):
                out.extend(f"a=rid:{rid} recv" for rid in rids)
                out.append("a=simulcast:recv " + ";".join(rids))
    return "\r\n".join(out) + "\r\n"
