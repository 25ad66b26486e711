"""Subject names: room tokens are valid NATS tokens, injective and invertible."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import subjects
from schemas.subjects import (
    log_partition_filter,
    log_transform_destination,
    partition_of,
    room_id_from_log_subject,
    room_id_from_token,
    room_token,
)

room_ids = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")), max_size=subjects.MAX_ROOM_ID_CHARS
)
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-_~")


def assert_valid_token(token: str) -> None:
    assert token, "a subject token is never empty"
    assert set(token) <= _TOKEN_CHARS, token
    assert not any(c in token for c in ".*>") and not any(c.isspace() for c in token)


@given(room_ids)
def test_any_room_id_makes_a_valid_token_that_inverts(room_id: str) -> None:
    token = room_token(room_id)
    assert_valid_token(token)
    assert room_id_from_token(token) == room_id


@given(room_ids, room_ids)
def test_distinct_room_ids_make_distinct_tokens(a: str, b: str) -> None:
    if a != b:
        assert room_token(a) != room_token(b)


@given(st.from_regex(r"[A-Za-z0-9_-]{1,256}", fullmatch=True))
def test_plain_ids_are_used_as_they_are(room_id: str) -> None:
    assert room_token(room_id) == room_id


@pytest.mark.parametrize(
    ("room_id", "token"),
    [
        ("lobby", "lobby"),
        ("a.b", "~YS5i"),
        ("", "~"),
        ("~x", "~fng"),
        ("café", "~Y2Fmw6k"),
        ("a b", "~YSBi"),
        (">", "~Pg"),
    ],
)
def test_examples(room_id: str, token: str) -> None:
    assert room_token(room_id) == token
    assert room_id_from_token(token) == room_id


def test_an_encoded_id_cannot_collide_with_a_plain_one() -> None:
    # "~" never appears in a plain id, and every non-plain id starts with it.
    assert room_token("~YS5i") != room_token("a.b")
    assert room_id_from_token(room_token("~YS5i")) == "~YS5i"


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "~~", "~Ph", "~bG9iYnk", "~!!", "é"])
def test_tokens_room_token_cannot_make_are_rejected(bad: str) -> None:
    # "~Ph" decodes like "~Pg" (">") but is not canonical; "~bG9iYnk" is "lobby" spelled long.
    with pytest.raises(ValueError):
        room_id_from_token(bad)


def test_room_ids_too_long_or_not_unicode_are_rejected() -> None:
    room_token("x" * 256)
    with pytest.raises(ValueError):
        room_token("x" * 257)
    with pytest.raises(ValueError):
        room_token("bad \udc80 surrogate")


@pytest.mark.parametrize("bad", ["x\x00y", "\x00", "tab\there", "new\nline", "del\x7f", "c1\x85"])
def test_room_ids_with_nul_or_control_characters_make_no_token(bad: str) -> None:
    # NUL would stall PostgreSQL persistence; no wire decode lets such an id through either.
    with pytest.raises(ValueError, match="control character"):
        room_token(bad)
    with pytest.raises(ValueError):
        subjects.public_event(bad, "participant_joined")


def test_room_subjects() -> None:
    assert subjects.room_log("a.b") == "stagecast.log.~YS5i"
    assert subjects.room_speakers("r") == "stagecast.room.r.speakers"
    assert subjects.room_counts("r") == "stagecast.room.r.counts"
    assert subjects.room_mod("r") == "stagecast.room.r.mod"
    assert subjects.room_data("r") == "stagecast.room.r.data"
    assert subjects.room_wildcard("r") == "stagecast.room.r.*"
    assert subjects.public_event("r", "room_started") == "stagecast.events.r.room_started"
    assert subjects.room_events("a b") == "stagecast.events.~YSBi.*"


def test_service_subjects_and_streams() -> None:
    assert subjects.STATEKEEPER_API == "stagecast.sk.api"
    assert subjects.EDGE_HEARTBEAT == "stagecast.edges.heartbeat"
    assert subjects.FORWARDER_HEARTBEAT == "stagecast.forwarders.heartbeat"
    assert subjects.LOG_STREAM == "STAGECAST_LOG"
    assert subjects.EVENTS_STREAM == "STAGECAST_EVENTS"
    assert subjects.LOG_SUBJECTS == "stagecast.log.*"
    assert subjects.EVENTS_SUBJECTS == "stagecast.events.>"


def test_session_subjects_take_only_generated_ids() -> None:
    assert subjects.session("edge-1", "PA_x9") == "stagecast.sess.edge-1.PA_x9"
    assert subjects.edge_sessions("edge-1") == "stagecast.sess.edge-1.>"
    for edge_id, sid in [("e.1", "s"), ("e", "s*"), ("", "s"), ("e", ""), ("e", "a b")]:
        with pytest.raises(ValueError):
            subjects.session(edge_id, sid)
    with pytest.raises(ValueError):
        subjects.edge_sessions("e>")
    with pytest.raises(ValueError):
        subjects.public_event("r", "room.started")


def test_partitioned_log_subjects() -> None:
    assert log_transform_destination(4) == "stagecast.logp.{{partition(4,1)}}.{{wildcard(1)}}"
    assert log_partition_filter(3) == "stagecast.logp.3.*"
    assert subjects.room_log_partitioned("r", 1) == "stagecast.logp.0.r"
    with pytest.raises(ValueError):
        log_transform_destination(0)
    with pytest.raises(ValueError):
        log_partition_filter(-1)


@given(room_ids, st.integers(min_value=1, max_value=64))
def test_partition_is_in_range_and_stable(room_id: str, partitions: int) -> None:
    p = partition_of(room_id, partitions)
    assert 0 <= p < partitions
    assert p == partition_of(room_id, partitions)
    assert partition_of(room_id, 1) == 0


@given(room_ids)
def test_room_id_from_log_subject(room_id: str) -> None:
    assert room_id_from_log_subject(subjects.room_log(room_id)) == room_id
    assert room_id_from_log_subject(subjects.room_log_partitioned(room_id, 8)) == room_id


def test_room_id_from_log_subject_rejects_other_subjects() -> None:
    for bad in ["stagecast.room.r.counts", "stagecast.log", "stagecast.logp.0", "x.log.r"]:
        with pytest.raises(ValueError):
            room_id_from_log_subject(bad)
