"""The webhook sender's pure parts: signatures, bodies, filters, verdicts, room queues."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import standardwebhooks

import stagecast
from schemas.agents import AgentDispatch, AgentJobEndedEvent
from schemas.events import (
    ParticipantJoinedEvent,
    ParticipantLeftEvent,
    RoomFinished,
    RoomStarted,
    TrackPublishedEvent,
)
from schemas.models import Counts, ParticipantInfo, RoomInfo, TrackInfo
from schemas.webhooks import EVENT_NAMES, decode_webhook, encode_webhook, webhook_event
from webhooks.delivery import Backoff, Verdict, judge
from webhooks.endpoints import Endpoint, endpoints_from_options
from webhooks.errors import InvalidWebhook, WebhookConfigError
from webhooks.rooms import RoomQueues
from webhooks.signing import (
    LIVEKIT_CONTENT_TYPE,
    livekit_authorization,
    parse_secret,
    standard_headers,
    verify_livekit,
    verify_standard,
)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
KEY = parse_secret(SECRET)
NOW = 1_800_000_000
ALICE = ParticipantInfo(sid="PA_1", id="alice", name="Alice", joined_at=NOW * 1000 + 5)
VIEWER = ParticipantInfo(sid="PA_2", id="vic", is_viewer=True)
TRACK = TrackInfo(sid="TR_1", kind="video", source="camera", name="cam")


def joined(who: ParticipantInfo = ALICE, seq: int = 7) -> ParticipantJoinedEvent:
    return ParticipantJoinedEvent(
        id=f"{seq}.pj", at=NOW * 1000, room_id="demo", room_sid="RM_1", participant=who
    )


# --------------------------------------------------------------------------- signatures


def test_a_standard_signature_verifies_with_the_third_party_library() -> None:
    body = b'{"event":"room_started"}'
    headers = standard_headers(KEY, "12.rs", NOW, body)
    # standardwebhooks checks the timestamp against its own clock: sign with now for it
    fresh = standard_headers(KEY, "12.rs", int(time.time()), body)
    assert standardwebhooks.Webhook(SECRET).verify(body, fresh) == {"event": "room_started"}
    assert verify_standard(KEY, body, headers, NOW) == "12.rs"
    tampered = dict(headers, **{"webhook-id": "13.rs"})
    with pytest.raises(InvalidWebhook, match="signature"):
        verify_standard(KEY, body, tampered, NOW)
    with pytest.raises(InvalidWebhook, match="signature"):
        verify_standard(KEY, body + b" ", headers, NOW)
    with pytest.raises(InvalidWebhook, match="stale"):
        verify_standard(KEY, body, headers, NOW + 301)
    with pytest.raises(InvalidWebhook, match="missing webhook-signature"):
        verify_standard(KEY, body, {"webhook-id": "1", "webhook-timestamp": str(NOW)}, NOW)


def test_secrets_are_whsec_base64_of_enough_bytes() -> None:
    assert parse_secret(SECRET.removeprefix("whsec_")) == KEY
    assert parse_secret(SECRET.rstrip("=")) == KEY  # unpadded, as the library accepts
    with pytest.raises(WebhookConfigError, match="not whsec_<base64>"):
        parse_secret("whsec_not base64!")
    with pytest.raises(WebhookConfigError, match="at least 16"):
        parse_secret("whsec_" + base64.b64encode(b"short").decode())


def test_the_livekit_token_carries_the_body_sha256_and_is_checked() -> None:
    body = b'{"event":"room_finished"}'
    token = livekit_authorization("key", "secret-secret-secret-secret-32by", body, NOW)
    claims = jwt.decode(
        token,
        "secret-secret-secret-secret-32by",
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    assert claims["iss"] == "key"
    assert claims["sha256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert LIVEKIT_CONTENT_TYPE == "application/webhook+json"
    live = livekit_authorization("key", "secret-secret-secret-secret-32by", body, int(time.time()))
    verify_livekit("key", "secret-secret-secret-secret-32by", body, live)
    with pytest.raises(InvalidWebhook, match="sha256"):
        verify_livekit("key", "secret-secret-secret-secret-32by", body + b"x", live)
    with pytest.raises(InvalidWebhook, match="Authorization"):
        verify_livekit("other", "secret-secret-secret-secret-32by", body, live)
    with pytest.raises(InvalidWebhook, match="Authorization"):
        verify_livekit("key", "secret-secret-secret-secret-32by", body, token)  # expired


# --------------------------------------------------------------------------- bodies


def test_bodies_have_livekits_shape() -> None:
    published = TrackPublishedEvent(
        id="9.tp", at=NOW * 1000, room_id="demo", room_sid="RM_1", participant=ALICE, track=TRACK
    )
    doc = json.loads(encode_webhook(webhook_event(published)))
    assert doc["event"] == "track_published"
    assert doc["id"] == "9.tp"
    assert doc["createdAt"] == NOW
    assert doc["room"]["sid"] == "RM_1" and doc["room"]["name"] == "demo"
    assert doc["participant"]["identity"] == "alice"
    assert doc["participant"]["isViewer"] is False
    assert doc["participant"]["kind"] == "STANDARD"
    assert doc["participant"]["joinedAt"] == NOW
    assert doc["track"] == {
        "sid": "TR_1",
        "type": "VIDEO",
        "source": "CAMERA",
        "name": "cam",
        "muted": False,
    }
    info = RoomInfo(id="demo", sid="RM_1", metadata="m", created_at=NOW * 1000, counts=Counts())
    finished = webhook_event(RoomFinished(id="3.rf", at=NOW * 1000, room=info, reason="empty"))
    doc = json.loads(encode_webhook(finished))
    assert doc["room"]["metadata"] == "m" and doc["room"]["creationTime"] == NOW
    assert doc["reason"] == "empty" and doc["participant"] is None
    assert decode_webhook(encode_webhook(finished)) == finished
    left = ParticipantLeftEvent(
        id="4.pl", at=NOW * 1000, room_id="r", room_sid="s", participant=VIEWER, reason="kicked"
    )
    assert json.loads(encode_webhook(webhook_event(left)))["participant"]["isViewer"] is True


def test_agent_job_events_become_webhooks_with_the_dispatch() -> None:
    job = AgentDispatch(
        id="AJ_1", room_id="demo", agent_name="assistant", state="running", worker_id="AW_1"
    )
    ended = AgentJobEndedEvent(
        id="AJ_1.1.ended", at=NOW * 1000, room_id="demo", dispatch=job, reason="worker_lost"
    )
    body = webhook_event(ended)
    assert "agent_job_ended" in EVENT_NAMES and "agent_job_started" in EVENT_NAMES
    assert (body.event, body.id, body.room.name, body.reason) == (
        "agent_job_ended",
        "AJ_1.1.ended",
        "demo",
        "worker_lost",
    )
    wire = json.loads(encode_webhook(body))
    assert wire["agentDispatch"] == {
        "id": "AJ_1",
        "agentName": "assistant",
        "metadata": "",
        "state": "running",
        "workerId": "AW_1",
        "attempt": 0,
    }
    assert decode_webhook(encode_webhook(body)) == body


# --------------------------------------------------------------------------- filters


def test_endpoints_get_speakers_joins_unless_asked_for_everyone() -> None:
    speakers = Endpoint("http://h/x", KEY)
    everyone = Endpoint("http://h/x", KEY, all_participants=True)
    rooms_only = Endpoint("http://h/x", KEY, events=frozenset({"room_started"}))
    started = RoomStarted(id="1.rs", at=0, room=RoomInfo(id="r", sid="s"))
    assert speakers.wants(joined()) and not speakers.wants(joined(VIEWER))
    assert everyone.wants(joined(VIEWER))
    assert rooms_only.wants(started) and not rooms_only.wants(joined())


def test_endpoint_options_match_by_position_or_fail_by_name() -> None:
    two = endpoints_from_options(
        ["http://a/h", "https://b/h"],
        [SECRET, SECRET],
        ["room_started", "track_published"],
        ["all"],
    )
    assert [e.events for e in two] == [frozenset({"room_started"}), frozenset({"track_published"})]
    assert all(e.all_participants for e in two)
    assert two[0].consumer != two[1].consumer
    assert endpoints_from_options(["http://a/h"], [SECRET])[0].events == EVENT_NAMES
    bad = [
        ((["http://a/h"], []), "webhook secret"),
        ((["ftp://a/h"], [SECRET]), "webhook url"),
        ((["http://a/h", "http://a/h"], [SECRET, SECRET]), "webhook url"),
        ((["http://a/h"], [SECRET], ["room_sarted"]), "webhook events"),
        ((["http://a/h"], [SECRET], [], ["viewers"]), "webhook participants"),
        ((["http://a/h"] * 1, [SECRET], ["room_started", "room_finished"]), "webhook events"),
    ]
    for args, what in bad:
        with pytest.raises(WebhookConfigError) as caught:
            endpoints_from_options(*args)
        assert caught.value.what == what, args


# --------------------------------------------------------------------------- verdicts


def test_answers_map_to_verdicts_and_retries_back_off_with_jitter_up_to_the_horizon() -> None:
    backoff = Backoff(base=1.0, cap=60.0, horizon=100.0)
    assert judge(204, 1, 0.0, backoff, 0.5) == (Verdict.DELIVERED, 0.0)
    assert judge(410, 1, 0.0, backoff, 0.5) == (Verdict.DISABLE, 0.0)
    verdict, delay = judge(500, 3, 0.0, backoff, 0.0)
    assert verdict is Verdict.RETRY and delay == 2.0  # 4 s halved by the lowest jitter
    assert judge(None, 3, 0.0, backoff, 0.999)[1] < 4.0
    assert judge(503, 30, 0.0, backoff, 0.999)[1] <= 60.0  # capped
    assert judge(500, 3, 99.0, backoff, 0.0)[0] is Verdict.GIVE_UP
    rng = random.Random(1)
    delays = {judge(500, 5, 0.0, backoff, rng.random())[1] for _ in range(20)}
    assert len(delays) > 10 and all(8.0 <= d < 16.0 for d in delays)
    with pytest.raises(ValueError):
        Backoff(base=0.0)
    with pytest.raises(ValueError):
        Backoff(horizon=0.0)


# --------------------------------------------------------------------------- room queues


def test_room_queues_keep_each_rooms_order_and_ignore_a_held_redelivery() -> None:
    queues: RoomQueues[str] = RoomQueues(limit=3)
    assert queues.add("a", 1, "a1") is True
    assert queues.add("b", 2, "b1") is True
    assert queues.add("a", 3, "a2") is False
    assert queues.add("a", 3, "a2 again") is False  # already held: not queued twice
    assert queues.full and len(queues) == 3
    assert queues.head("a") == "a1"
    queues.pop("a")
    assert queues.head("a") == "a2" and not queues.full
    queues.pop("a")
    assert queues.head("a") is None and queues.rooms() == ["b"]
    assert queues.add("a", 3, "a2 redelivered") is True  # no longer held: a new delivery
    with pytest.raises(ValueError):
        RoomQueues[str](limit=0)


# --------------------------------------------------------------------------- SDK receiver


def test_the_sdk_receiver_verifies_then_parses() -> None:
    body = encode_webhook(webhook_event(joined()))
    headers = standard_headers(KEY, "7.pj", NOW, body)
    receiver = stagecast.WebhookReceiver(SECRET, clock=lambda: NOW + 10)
    event = receiver.receive(body, headers)
    assert isinstance(event, stagecast.WebhookEvent)
    assert event.event == "participant_joined" and event.participant is not None
    assert event.participant.identity == "alice"
    with pytest.raises(stagecast.InvalidWebhook, match="stale"):
        stagecast.WebhookReceiver(SECRET, clock=lambda: NOW + 1000).receive(body, headers)
    with pytest.raises(stagecast.InvalidWebhook, match="signature"):
        receiver.receive(body.replace(b"alice", b"mallory"), headers)
    garbage = b'{"not": "an event"}'
    with pytest.raises(stagecast.InvalidWebhook, match="not a webhook event"):
        receiver.receive(garbage, standard_headers(KEY, "x", NOW, garbage))
    with pytest.raises(WebhookConfigError):
        stagecast.WebhookReceiver("nope!")
    both = stagecast.WebhookReceiver(SECRET, api_key="k", api_secret="s" * 32)
    now = int(time.time())
    signed = standard_headers(KEY, "7.pj", now, body)
    signed["Authorization"] = livekit_authorization("k", "s" * 32, body, now)
    assert both.receive(body, signed).id == "7.pj"
    with pytest.raises(stagecast.InvalidWebhook, match="authorization"):
        both.receive(body, standard_headers(KEY, "7.pj", now, body))


async def test_the_receiver_example_in_the_docs_works(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).parent.parent / "docs" / "webhooks.md").read_text()
    example = text.split("## Receiving in Python", 1)[1].split("```python\n", 1)[1]
    example = example.split("```", 1)[0]
    monkeypatch.setenv("STAGECAST_WEBHOOK_SECRET", SECRET)
    namespace: dict[str, Any] = {}
    exec(compile(example, "docs/webhooks.md", "exec"), namespace)
    body = encode_webhook(webhook_event(joined()))
    headers = standard_headers(KEY, "7.pj", int(time.time()), body)
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for _ in range(2):  # the second is a duplicate, dropped by id
            answer = await client.post("/stagecast", content=body, headers=headers)
            assert answer.status_code == 204
        forged = await client.post("/stagecast", content=body + b" ", headers=headers)
        assert forged.status_code == 400 and "signature" in forged.text
    assert namespace["seen"] == {"7.pj"}


def test_the_receiver_loads_on_first_use_only() -> None:
    import subprocess
    import sys

    code = (
        "import sys, stagecast\n"
        "assert 'webhooks.signing' not in sys.modules\n"
        "assert {'WebhookReceiver', 'WebhookEvent', 'InvalidWebhook'} <= set(dir(stagecast))\n"
        "stagecast.WebhookReceiver\n"
        "assert 'webhooks.signing' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
