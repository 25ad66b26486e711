"""A forwarder says when a media connection never connects."""

from __future__ import annotations

import logging

import pytest
from aiortc import RTCPeerConnection

from forwarder.connectivity import watch_connection
from tests.polling import eventually


async def test_a_connection_that_never_connects_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="stagecast.forwarder")
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())  # no answer ever comes
        watch_connection(pc, "subscriber PA_lost", after=0.05)

        def warned() -> list[str]:
            return [r.getMessage() for r in caplog.records if "PA_lost" in r.getMessage()]

        (message,) = await eventually(warned, what="the warning about PA_lost")
        assert "still new" in message and "ICE new" in message
    finally:
        await pc.close()


async def test_a_closed_connection_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stagecast.forwarder")
    pc = RTCPeerConnection()
    watch_connection(pc, "publisher PA_gone", after=0.05)
    await pc.close()
    other = RTCPeerConnection()  # a second one that does warn: the first had its chance
    watch_connection(other, "publisher PA_other", after=0.1)
    try:
        await eventually(
            lambda: [r for r in caplog.records if "PA_other" in r.getMessage()],
            what="the warning about PA_other",
        )
        assert not [r for r in caplog.records if "PA_gone" in r.getMessage()]
    finally:
        await other.close()
