"""The sender's HTTP client against a real server on 127.0.0.1: keep-alive, closed
connections, TLS, timeouts, refusals, large answers."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from tests.tls_files import make_tls_files
from tests.webhook_fixtures import HttpReceiver
from webhooks.http import MAX_ANSWER_BYTES, EndpointPool

HEADERS = {"webhook-id": "1.x", "content-type": "application/webhook+json"}


async def test_posts_share_one_kept_alive_connection() -> None:
    receiver = await HttpReceiver().start()
    try:
        async with EndpointPool(receiver.url("/a?b=c"), max_connections=4) as pool:
            statuses = [await pool.post(HEADERS, b'{"n":%d}' % n) for n in range(5)]
        assert statuses == [200] * 5
        assert receiver.connections == 1
        assert [r.path for r in receiver.requests] == ["/a?b=c"] * 5
        assert [r.body for r in receiver.requests] == [b'{"n":%d}' % n for n in range(5)]
        assert receiver.requests[0].headers["webhook-id"] == "1.x"
    finally:
        await receiver.close()


@pytest.mark.parametrize("pause", [0.0, 0.05])
async def test_a_connection_the_server_closed_is_replaced_without_a_failed_attempt(
    pause: float,
) -> None:
    """Without a pause the POST usually goes out on the closed connection and is sent
    again on a fresh one; with one, the pool sees the close and opens a fresh one."""
    receiver = await HttpReceiver(close_after=True).start()
    try:
        async with EndpointPool(receiver.url()) as pool:
            for _ in range(3):
                assert await pool.post(HEADERS, b"{}") == 200
                await asyncio.sleep(pause)
        assert receiver.connections == 3
        assert len(receiver.requests) == 3
    finally:
        await receiver.close()


async def test_a_large_answer_is_not_drained_and_its_connection_not_kept() -> None:
    receiver = await HttpReceiver(reply=b"x" * (MAX_ANSWER_BYTES * 4)).start()
    try:
        async with EndpointPool(receiver.url()) as pool:
            assert await pool.post(HEADERS, b"{}") == 200
            assert await pool.post(HEADERS, b"{}") == 200
        assert receiver.connections == 2
    finally:
        await receiver.close()


async def test_no_answer_is_none_hang_refusal_or_untrusted_certificate(tmp_path: Path) -> None:
    never = asyncio.Event()

    async def hang(_path: str, _body: bytes) -> int:
        await never.wait()
        return 200

    hung = await HttpReceiver(hang).start()
    ca, cert, key = make_tls_files(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    secure = await HttpReceiver().start(server_tls)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    try:
        async with EndpointPool(hung.url(), timeout=0.3) as pool:
            assert await pool.post(HEADERS, b"{}") is None
        async with EndpointPool(f"http://127.0.0.1:{closed_port}/h") as pool:
            assert await pool.post(HEADERS, b"{}") is None
        async with EndpointPool(secure.url()) as pool:  # the system CAs do not know ours
            assert await pool.post(HEADERS, b"{}") is None
        trusted = ssl.create_default_context(cafile=str(ca))
        async with EndpointPool(secure.url(), ssl_context=trusted) as pool:
            assert await pool.post(HEADERS, b"{}") == 200
        assert len(secure.requests) == 1
    finally:
        await hung.close()
        await secure.close()
