"""The Stagecast client SDK: `join` a room, then follow speakers, counts, data and media.

See `Room` for the room's events and `RemoteParticipant` / `LocalParticipant` for the
participants. Media does not flow yet (`stagecast.client.media`): publishing announces a
track and subscribing records the intent on the server.
"""

from __future__ import annotations

from collections.abc import Sequence

from stagecast.client.connection import ConnectOptions, http_url, socket_url, socket_urls
from stagecast.client.events import (
    ConnectionState,
    DataMessage,
    ParticipantCounts,
    StreamEvent,
    SubscriptionFailure,
)
from stagecast.client.local import LocalParticipant, LocalTrackPublication
from stagecast.client.media import MediaTransport
from stagecast.client.participant import (
    GetParticipantsResult,
    RemoteParticipant,
    RemoteTrackPublication,
)
from stagecast.client.room import Room
from stagecast.client.rpc import RpcInvocationData
from stagecast.client.streams import (
    ByteStreamInfo,
    ByteStreamReader,
    ByteStreamWriter,
    StreamInfo,
    TextStreamInfo,
    TextStreamReader,
    TextStreamWriter,
)


async def join(
    url: str | Sequence[str],
    token: str,
    room_id: str | None = None,
    name: str | None = None,
    auto_subscribe: bool = True,
    *,
    options: ConnectOptions | None = None,
) -> Room:
    """Join a room and return it once the edge has accepted the session.

    `url` is an edge's base URL (`ws://`, `wss://`, `http://` or `https://`; the SDK derives
    the `/rtc` socket URL) or a list of edge URLs to fail over between. `room_id` is required
    when the token has none and must match the token's when it has one. A refusal raises
    its `stagecast.errors` class (`InvalidToken`, `RoomFull`, ...); no edge answering raises
    `Unavailable`.
    """
    room = Room(
        url, token, room_id=room_id, name=name, auto_subscribe=auto_subscribe, options=options
    )
    await room._session.connect()
    return room


__all__ = [
    "ByteStreamInfo",
    "ByteStreamReader",
    "ByteStreamWriter",
    "ConnectOptions",
    "ConnectionState",
    "DataMessage",
    "GetParticipantsResult",
    "LocalParticipant",
    "LocalTrackPublication",
    "MediaTransport",
    "ParticipantCounts",
    "RemoteParticipant",
    "RemoteTrackPublication",
    "Room",
    "RpcInvocationData",
    "StreamEvent",
    "StreamInfo",
    "SubscriptionFailure",
    "TextStreamInfo",
    "TextStreamReader",
    "TextStreamWriter",
    "http_url",
    "join",
    "socket_url",
    "socket_urls",
]
