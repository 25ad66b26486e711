from array import array

from rtc.packets import MediaPacket

HISTORY_SIZE: int
MAX_RTP_SIZE: int

class FastLeg:
    packets_sent: int
    octets_sent: int
    packets_refused: int
    last_sent_at: float
    last_rtp_timestamp: int
    diverted: bool
    @property
    def history(self) -> list[bytes | None]: ...
    @property
    def bound(self) -> bool: ...
    def __init__(self, history: list[bytes | None]) -> None: ...
    def configure(
        self,
        *,
        payload_type: int,
        ssrc: int,
        mid_element: bytes,
        abs_send_time_id: int,
        audio_level_id: int,
    ) -> None: ...
    def bind(
        self,
        *,
        session: object,
        protect: int,
        context: int,
        sock: object,
        address: object,
        queued: object,
        fallback: object,
        nominated: dict[int, object],
        component: int,
        pair: object,
        dtls: object,
        connected: object,
        sender: object,
    ) -> None: ...
    def unbind(self) -> None: ...

def fanout(
    packet: MediaPacket, legs: list[FastLeg], sequence_numbers: list[int], stamps: array[int] | None
) -> tuple[int, list[int]]: ...

class Rewriter:
    @property
    def started(self) -> bool: ...
    def __init__(self, first: int) -> None: ...
    def rewrite(self, seq: int) -> int | None: ...
    def skip(self, seq: int) -> bool: ...
    def restart(self) -> None: ...

def forward(
    packet: MediaPacket, rewriters: list[Rewriter], legs: list[FastLeg], stamps: array[int] | None
) -> tuple[int, list[tuple[int, int]]]: ...
def set_threads(count: int) -> None: ...
def threads() -> int: ...
def set_min_split(legs: int) -> None: ...
def shared_legs() -> tuple[int, int]: ...
def helper_running() -> bool: ...
