"""A plain WHIP client for tests: an aiortc peer connection and an HTTP POST, no SDK."""

from __future__ import annotations

import dataclasses

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack


@dataclasses.dataclass
class WhipPublisher:
    """What `whip_publish` made: the client's peer connection and the session's URL."""

    pc: RTCPeerConnection
    location: str
    answer: str

    async def close(self) -> None:
        await self.pc.close()


async def whip_offer(*, audio: bool = True, video: bool = True) -> RTCPeerConnection:
    """A send-only peer connection with aiortc's test tracks and its offer gathered."""
    pc = RTCPeerConnection()
    if video:
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def whip_publish(base_url: str, token: str, path: str = "/whip") -> WhipPublisher:
    """POST an offer to `base_url + path` and apply the answer (fails unless 201)."""
    pc = await whip_offer()
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
        response = await http.post(
            path,
            content=pc.localDescription.sdp,
            headers={"authorization": f"Bearer {token}", "content-type": "application/sdp"},
        )
    if response.status_code != 201:
        await pc.close()
        raise AssertionError(f"POST {path}: {response.status_code} {response.text}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
    return WhipPublisher(pc=pc, location=response.headers["location"], answer=response.text)
