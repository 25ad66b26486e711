"""Stagecast: self-hostable real-time rooms (client SDK, tokens, server API, CLI).

The public names below load on first use (PEP 562), so a service started through
`stagecast.cli` (a statekeeper, say) does not import the SDK, aiortc and httpx it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from stagecast.webhook import InvalidWebhook, WebhookEvent, WebhookReceiver

_HOMES = {
    "AdminClaims": "access.tokens",
    "AdminGrant": "access.tokens",
    "Claims": "access.tokens",
    "Grant": "access.tokens",
    "generate_admin_token": "access.tokens",
    "generate_token": "access.tokens",
    "verify_admin_token": "access.tokens",
    "verify_token": "access.tokens",
    "ConnectionState": "stagecast.client",
    "DataMessage": "stagecast.client",
    "GetParticipantsResult": "stagecast.client",
    "LocalParticipant": "stagecast.client",
    "ParticipantCounts": "stagecast.client",
    "RemoteParticipant": "stagecast.client",
    "Room": "stagecast.client",
    "join": "stagecast.client",
    "StagecastError": "stagecast.errors",
    "RoomService": "stagecast.server_api",
    "InvalidWebhook": "stagecast.webhook",
    "WebhookEvent": "stagecast.webhook",
    "WebhookReceiver": "stagecast.webhook",
}
"""Where each public name is defined."""
_SUBMODULES = frozenset({"client", "errors", "server_api"})
"""Submodules that importing the package used to bind as attributes too."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})


__all__ = [
    "AdminClaims",
    "AdminGrant",
    "Claims",
    "ConnectionState",
    "DataMessage",
    "GetParticipantsResult",
    "Grant",
    "InvalidWebhook",
    "LocalParticipant",
    "ParticipantCounts",
    "RemoteParticipant",
    "Room",
    "RoomService",
    "StagecastError",
    "WebhookEvent",
    "WebhookReceiver",
    "errors",
    "generate_admin_token",
    "generate_token",
    "join",
    "verify_admin_token",
    "verify_token",
]
