"""The api key and secret the `stagecast` command signs with: the environment, or the dev pair."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Final

DEV_KEY: Final = "devkey"
DEV_SECRET: Final = "devsecret"
KEY_VAR: Final = "STAGECAST_API_KEY"
SECRET_VAR: Final = "STAGECAST_API_SECRET"
_SHORT_KEY_WARNING: Final = r"The HMAC key is \d+ bytes long"
"""PyJWT's `InsecureKeyLengthWarning` text, matched so that PyJWT (slow to import) is not
imported here: a statekeeper started by this command never needs it."""


def _quiet_short_key() -> None:
    warnings.filterwarnings("ignore", message=_SHORT_KEY_WARNING)


class HalfCredentials(SystemExit):
    """Only one of STAGECAST_API_KEY / STAGECAST_API_SECRET is set (the other is not
    guessed: a key without its secret, or the reverse, signs nothing a server accepts)."""

    def __init__(self, present: str, missing: str) -> None:
        super().__init__(
            f"stagecast: {present} is set but {missing} is not: set both, "
            f"or neither for the dev pair {DEV_KEY}/{DEV_SECRET}"
        )
        self.present = present
        self.missing = missing


def credentials(*, warn: bool = True) -> tuple[str, str]:
    """The api key and secret from the environment, or the dev pair.

    The dev pair is said once on stderr when `warn` (the commands that run a server);
    PyJWT's warning about its short secret is silenced, as the dev pair is short on
    purpose. One variable without the other raises `HalfCredentials`.
    """
    key = os.environ.get(KEY_VAR) or ""
    secret = os.environ.get(SECRET_VAR) or ""
    if key and secret:
        if (key, secret) == (DEV_KEY, DEV_SECRET):
            _quiet_short_key()
        return key, secret
    if key or secret:
        raise HalfCredentials(*((KEY_VAR, SECRET_VAR) if key else (SECRET_VAR, KEY_VAR)))
    if warn:
        print(
            f"warning: {KEY_VAR}/{SECRET_VAR} not set; using the dev pair "
            f"{DEV_KEY}/{DEV_SECRET} (fine on this machine, never in production)",
            file=sys.stderr,
        )
    _quiet_short_key()
    return DEV_KEY, DEV_SECRET


__all__ = ["DEV_KEY", "DEV_SECRET", "HalfCredentials", "credentials"]
