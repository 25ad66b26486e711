"""Stagecast: self-hostable real-time rooms (client SDK, tokens, server API, CLI)."""

from __future__ import annotations

from access.tokens import (
    AdminClaims,
    AdminGrant,
    Claims,
    Grant,
    generate_admin_token,
    generate_token,
    verify_admin_token,
    verify_token,
)
from stagecast import errors
from stagecast.client import (
    ConnectionState,
    DataMessage,
    GetParticipantsResult,
    LocalParticipant,
    ParticipantCounts,
    RemoteParticipant,
    Room,
    join,
)
from stagecast.errors import StagecastError
from stagecast.server_api import RoomService

__all__ = [
    "AdminClaims",
    "AdminGrant",
    "Claims",
    "ConnectionState",
    "DataMessage",
    "GetParticipantsResult",
    "Grant",
    "LocalParticipant",
    "ParticipantCounts",
    "RemoteParticipant",
    "Room",
    "RoomService",
    "StagecastError",
    "errors",
    "generate_admin_token",
    "generate_token",
    "join",
    "verify_admin_token",
    "verify_token",
]
