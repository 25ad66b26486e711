"""`stagecast up` with an endpoint starts the webhook sender on its own NATS role."""

from __future__ import annotations

import socket
from pathlib import Path

import nats.js.errors

from roomlog.connect import connect
from roomlog.natslink import NatsLink
from roomlog.roles import Role
from schemas.subjects import EVENTS_STREAM
from stagecast.server_api import RoomService
from stagecast.up import Stack, UpConfig, log
from stagecast.webhooks_cli import ENV_SECRET, ENV_URL
from tests.polling import eventually
from tests.webhook_fixtures import API_KEY, API_SECRET, SECRET, HttpReceiver, verified
from webhooks.endpoints import endpoints_from_options

WAIT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_up_with_an_endpoint_delivers_room_events_from_the_real_statekeeper(
    tmp_path: Path,
) -> None:
    receiver = await HttpReceiver().start()
    config = UpConfig(
        port=_free_port(),
        data_dir=tmp_path / "data",
        forwarders=0,
        api_key=API_KEY,
        api_secret=API_SECRET,
        webhook_env={ENV_URL: receiver.url(), ENV_SECRET: SECRET},
        webhook_args=("--webhook-events", "room_started,room_finished"),
    )
    stack = Stack(config)
    try:
        await stack.start(log=lambda *_: None)
        admin = await connect(
            stack.nats_url,
            name="test-admin",
            link=NatsLink("test-admin", log),
            role=Role.ADMIN.value,
            auth=stack.auth_for(Role.ADMIN),
        )
        consumer = endpoints_from_options([receiver.url()], [SECRET])[0].consumer

        async def bound() -> bool:
            try:
                await admin.jetstream().consumer_info(EVENTS_STREAM, consumer)
            except nats.js.errors.NotFoundError:
                return False
            return True

        try:
            await eventually(bound, timeout=WAIT, what="the webhook sender's consumer")
        finally:
            await admin.close()
        async with RoomService(stack.edge_urls[0], API_KEY, API_SECRET) as api:
            await api.create_room("hooked")
            await api.delete_room("hooked")
        await eventually(lambda: len(receiver.delivered()) == 2, timeout=WAIT, what="two")
        assert stack.nats is not None
        assert "Violation" not in stack.nats.log_tail()  # the webhook role was enough
    finally:
        await stack.stop()
        await receiver.close()
    docs = [verified(r) for r in receiver.delivered()]
    assert [d["event"] for d in docs] == ["room_started", "room_finished"]
    assert {d["room"]["name"] for d in docs} == {"hooked"}
    assert docs[0]["room"]["sid"] == docs[1]["room"]["sid"]
