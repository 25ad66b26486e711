"""Every wire message of Stagecast, and the codec that encodes and decodes them.

Import message classes from here (`from schemas import Join, encode, decode`). The
submodules group them: `client` (client <-> edge frames), `log` (room-log events), `events`
(public integration events), `api` (server API and internal RPC), `media` (statekeeper and
edge <-> forwarder), `streams` (text/byte streams and RPC inside data payloads), `models`
(nested values).
"""

from __future__ import annotations

from schemas.agents import *  # noqa: F403
from schemas.api import *  # noqa: F403
from schemas.client import *  # noqa: F403
from schemas.codec import (
    MAX_FRAME_BYTES,
    Message,
    Struct,
    compile_all,
    decode,
    decode_as,
    encode,
    from_wire,
    pack_struct,
    registered,
    to_wire,
    unpack_struct,
)
from schemas.errors import *  # noqa: F403
from schemas.events import *  # noqa: F403
from schemas.log import *  # noqa: F403
from schemas.media import *  # noqa: F403
from schemas.models import *  # noqa: F403
from schemas.streams import *  # noqa: F403

compile_all()

__all__ = [
    "MAX_FRAME_BYTES",
    "Message",
    "Struct",
    "compile_all",
    "decode",
    "decode_as",
    "encode",
    "from_wire",
    "pack_struct",
    "registered",
    "to_wire",
    "unpack_struct",
]
