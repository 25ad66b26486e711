"""WebRTC media shared by the forwarder and the SDK: RTP packets and the aiortc adapter.

`packets` is the pure RTP model (no aiortc); `aiortc_adapter` holds every aiortc and aioice
private name behind one seam, refuses to import unless aiortc is the pinned version, and is
imported lazily by the SDK (only when media is used). Imports only `schemas`.
"""
