"""The edge's and the SDK's internals stay layered (issue 9): no import cycle, one clock,
one request -> room-log event table, a join's bookkeeping in one place. Pure: no IO."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge.actions import EVENTS, Origin, to_event
from edge.api import READS
from edge.join import JoinAttempt
from edge.requests import HANDLERS, on_action, on_leave, on_publish_track, on_subscription
from schemas.agents import DeleteDispatchRequest, DispatchAgentRequest
from schemas.api import (
    CreateRoomRequest,
    DeleteRoomRequest,
    MuteTrackRequest,
    RemoveParticipantRequest,
    SendDataRequest,
    UpdateParticipantRequest,
    UpdateRoomMetadataRequest,
)
from schemas.client import PublishTrack, RaiseHand
from schemas.codec import Message
from schemas.log import AttributesSet, RoomCreateRequested, TrackPublishRequested
from schemas.models import HAND_ATTRIBUTE, HAND_RAISED

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("edge", "forwarder", "schemas", "stagecast", "statekeeper")


def _imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (TYPE_CHECKING imports included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = {m for m in found if m.split(".")[0] == package and m != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in graph:
                continue
            if state.get(imported) == 1:
                cycles.append([*stack[stack.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


@pytest.mark.parametrize("package", ["edge", "stagecast"])
def test_edge_and_sdk_modules_import_without_cycles(package: str) -> None:
    assert _cycles(_imports(package)) == []


def test_edge_session_knows_neither_the_node_nor_the_frame_handlers() -> None:
    imported = _imports("edge")["edge.session"]
    assert not imported & {"edge.node", "edge.requests", "edge.entry", "edge.media"}, imported


def test_sdk_session_does_not_import_the_room() -> None:
    assert "stagecast.client.room" not in _imports("stagecast")["stagecast.client.session"]


def test_now_ms_is_defined_once_in_schemas_clock() -> None:
    defined = [
        str(path.relative_to(ROOT))
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
        if "def now_ms(" in path.read_text() or "time_ns() // 1_000_000" in path.read_text()
    ]
    assert defined == ["schemas/clock.py"]


def test_every_action_and_server_api_write_has_one_entry_in_the_event_table() -> None:
    actions = {
        kind
        for kind, handler in HANDLERS.items()
        if handler in (on_action, on_leave, on_publish_track, on_subscription)
    }
    writes: set[type[Message]] = {
        CreateRoomRequest,
        DeleteRoomRequest,
        UpdateRoomMetadataRequest,
        UpdateParticipantRequest,
        RemoveParticipantRequest,
        MuteTrackRequest,
        DispatchAgentRequest,
        DeleteDispatchRequest,
    }
    assert actions | writes == set(EVENTS)
    assert not set(EVENTS) & {*READS, SendDataRequest}


def test_a_socket_action_becomes_an_event_naming_its_session_and_request() -> None:
    origin = Origin(room_id="r", at=5, reply_to="stagecast.sess.e.PA_1.c", sid="PA_1", req=7)
    event = to_event(RaiseHand(id=7), origin)
    assert event == AttributesSet(
        room_id="r",
        at=5,
        sid="PA_1",
        attributes={HAND_ATTRIBUTE: HAND_RAISED},
        reply_to=origin.reply_to,
        req=7,
    )
    published = to_event(PublishTrack(id=8, kind="audio", source="microphone", name="m"), origin)
    assert isinstance(published, TrackPublishRequested)
    assert published.track.sid.startswith("TR_") and published.sid == "PA_1"


def test_a_server_api_write_becomes_an_event_answered_on_its_inbox() -> None:
    origin = Origin(room_id="r", at=5, reply_to="_INBOX.x")
    event = to_event(CreateRoomRequest(room_id="r", max_participants=3), origin)
    assert isinstance(event, RoomCreateRequested)
    assert (event.room_id, event.at, event.reply_to, event.req) == ("r", 5, "_INBOX.x", 0)
    assert event.room_sid.startswith("RM_") and event.max_participants == 3
    assert to_event(SendDataRequest(room_id="r", payload=b"x"), origin) is None


@pytest.mark.parametrize(
    ("key", "resuming", "was_joined", "withdraws"),
    [
        ("", False, False, True),  # a plain join in flight: withdrawn (LeaveRequested)
        ("k", False, False, False),  # a keyed join: the client retries the same sid
        ("", True, False, False),  # a resume: the session waits in its grace
        ("", False, True, False),  # joined: the departure grace starts
    ],
)
def test_a_dropped_socket_withdraws_only_a_plain_join_in_flight(
    key: str, resuming: bool, was_joined: bool, withdraws: bool
) -> None:
    attempt = JoinAttempt(req=1, key=key, resuming=resuming, appended=True)
    assert attempt.withdraws_on_close(was_joined) is withdraws
    assert attempt.answers(1) and not attempt.answers(2) and not attempt.answers(None)
