"""The forwarder: RTP packets from publishers to subscribers, never decoded or encoded.

`forwarder.node.Forwarder` owns the aiortc peer connections; `forwarder.router.Router` is
the pure core (tracks, legs, mutes, keyframe requests); `rtc.aiortc_adapter` is the
only module that touches aiortc's private internals (aiortc is pinned to one version).
`stagecast bench media` (`stagecast/bench/mediaforwarder.py`) measures the CPU cost per
forwarded packet.
"""
