"""How the `stagecast` command's help reads: every flag says its default."""

from __future__ import annotations

import argparse
from typing import Any

URL_HELP = "an edge's URL (STAGECAST_URL; default http://127.0.0.1:7880)"


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to a flag's help when it has a default worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class CommandParser(argparse.ArgumentParser):
    """Every command's parser: each flag's help says its default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


__all__ = ["URL_HELP", "CommandParser", "DefaultsFormatter"]
