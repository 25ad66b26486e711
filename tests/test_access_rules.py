"""The one "may this participant do X" rule set (access/rules.py) that edge and fold share."""

from __future__ import annotations

import msgspec

from access.rules import (
    GRANT_PUBLISH,
    GRANT_PUBLISH_DATA,
    GRANT_SUBSCRIBE,
    VIEWER_PUBLISH,
    refuse_publish,
    refuse_publish_data,
    refuse_subscribe,
)
from schemas.errors import ErrorCode
from schemas.models import Grant

FULL = Grant()
NOTHING = Grant(
    can_publish=False, can_subscribe=False, can_publish_data=False, can_subscribe_data=False
)


def test_a_speaker_with_the_default_grant_may_do_everything() -> None:
    assert refuse_publish(False, FULL) is None
    assert refuse_subscribe(FULL) is None
    assert refuse_publish_data(FULL) is None


def test_a_viewer_may_never_publish_whatever_its_grant_says() -> None:
    assert refuse_publish(True, FULL) is VIEWER_PUBLISH
    assert refuse_publish(True, NOTHING) is VIEWER_PUBLISH


def test_each_missing_grant_is_refused_with_its_own_reason() -> None:
    assert refuse_publish(False, msgspec.structs.replace(FULL, can_publish=False)) is GRANT_PUBLISH
    assert refuse_subscribe(msgspec.structs.replace(FULL, can_subscribe=False)) is GRANT_SUBSCRIBE
    no_data = msgspec.structs.replace(FULL, can_publish_data=False)
    assert refuse_publish_data(no_data) is GRANT_PUBLISH_DATA
    for refusal in (VIEWER_PUBLISH, GRANT_PUBLISH, GRANT_SUBSCRIBE, GRANT_PUBLISH_DATA):
        assert refusal.code is ErrorCode.INVALID_PERMISSIONS
        assert refusal.reason
