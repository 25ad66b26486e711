"""The edge's random ids (`edge.join.RandomTokens`): one read of the kernel's CSPRNG for
many ids, never the same bytes twice, not even across a fork."""

from __future__ import annotations

import base64
import os

from edge.join import RandomTokens, new_participant_id, new_sid


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_tokens_are_the_sizes_asked_and_never_repeat() -> None:
    tokens = RandomTokens(size=64)
    drawn = [tokens.token(12) for _ in range(200)]  # many refills of a small pool
    assert all(len(_raw(t)) == 12 for t in drawn)
    assert len(set(drawn)) == len(drawn)
    assert len(_raw(tokens.token(100))) == 100  # larger than the pool: read for itself
    assert new_sid().startswith("PA_") and len(new_sid()) == 19
    assert new_participant_id().startswith("p-") and len(new_participant_id()) == 14


def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    tokens = RandomTokens(size=4096)
    tokens.token(12)  # the pool now holds unused bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next token, to the parent
        try:
            os.write(write, tokens.token(12).encode())
        finally:
            os._exit(0)
    os.close(write)
    _pid, status = os.waitpid(pid, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert from_child and from_child != tokens.token(12)
