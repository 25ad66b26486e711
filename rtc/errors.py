"""Named errors of the aiortc adapter."""

from __future__ import annotations


class RtcError(Exception):
    """Root of every error the rtc adapter raises on purpose."""


class UnsupportedAiortc(RtcError):
    """The installed aiortc is not the version whose internals the adapter was written for."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(
            f"rtc.aiortc_adapter needs aiortc=={expected} (it reaches into private "
            f"internals), found aiortc {found}; pin aiortc=={expected} or port the adapter"
        )
        self.found = found
        self.expected = expected


class InvalidStateError(RtcError):
    """A call that the object's lifecycle state does not allow (e.g. after `close()`)."""

    def __init__(self, what: str, state: str) -> None:
        super().__init__(f"{what} is not allowed in state {state}")
        self.what = what
        self.state = state


class MalformedPayload(RtcError):
    """An RTP payload that ends inside its codec's payload descriptor."""

    def __init__(self, codec: str, reason: str) -> None:
        super().__init__(f"malformed {codec} payload: {reason}")
        self.codec = codec
        self.reason = reason


class PacketTooLong(RtcError):
    """An RTP packet too long to protect in one datagram with its SRTP trailer."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an RTP packet of {size} bytes cannot be protected (at most {limit})")
        self.size = size
        self.limit = limit


class BadFanoutThreads(RtcError):
    """`STAGECAST_FANOUT_THREADS` is not one of ``1``, ``2``, ``auto``."""

    def __init__(self, value: str) -> None:
        super().__init__(f"STAGECAST_FANOUT_THREADS must be 1, 2 or auto, not {value!r}")
        self.value = value
