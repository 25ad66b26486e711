"""`stagecast rooms ...` and `stagecast participants ...`: the server API from the shell.

Tables go to stdout (ids are never cut: a narrow terminal folds them), `--json` prints the
objects instead, and errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.table import Table

from schemas.models import ParticipantInfo, RoomInfo
from stagecast.errors import StagecastError
from stagecast.server_api import RoomService

WIDE = 100_000
"""Console width when stdout is no terminal: a pipe gets whole lines, not 80 columns."""


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=WIDE)


def _errors() -> Console:
    return Console(stderr=True)


def _json(value: Any) -> None:
    print(json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=True))


def _table(title: str, columns: tuple[str, ...], ids: int) -> Table:
    """A table whose first `ids` columns fold instead of being cut."""
    table = Table(title=title)
    for n, column in enumerate(columns):
        table.add_column(column, overflow="fold" if n < ids else "ellipsis")
    return table


async def rooms(args: argparse.Namespace, url: str, api_key: str, api_secret: str) -> int:
    if args.action != "list" and not args.room:
        _errors().print(f"stagecast rooms {args.action}: a room id is required")
        return 2
    async with RoomService(url, api_key, api_secret) as api:
        try:
            if args.action == "list":
                _print_rooms(await api.list_rooms(), url, as_json=args.json)
                return 0
            if args.action == "create":
                return await _create(api, args)
            await api.delete_room(args.room)
        except StagecastError as exc:
            _errors().print(f"stagecast rooms {args.action}: {exc.code}: {exc.message}")
            return 1
        except httpx.HTTPError as exc:
            _errors().print(f"stagecast rooms {args.action}: cannot reach {url}: {exc}")
            return 1
    if args.json:
        _json({"deleted": args.room})
    else:
        _console().print(f"deleted {args.room}")
    return 0


async def _create(api: RoomService, args: argparse.Namespace) -> int:
    """Create the room; an existing one is said so, and options it lacks are not dropped
    silently (exit 1: the server keeps a room's options)."""
    existing = await api.list_rooms([args.room])
    if existing:
        room = existing[0]
        differs = []
        if args.livestream and not room.livestream:
            differs.append("--livestream")
        if args.max_participants and args.max_participants != room.max_participants:
            differs.append(f"--max-participants {args.max_participants}")
        if args.json:
            _json({"room": room, "created": False})
        else:
            _console().print(f"room {room.id} exists already ({room.sid})")
        if differs:
            _errors().print(
                f"stagecast rooms create: {room.id} exists without {', '.join(differs)}; "
                "not changed (delete it and create it again)"
            )
            return 1
        return 0
    room = await api.create_room(
        args.room, max_participants=args.max_participants, livestream=args.livestream
    )
    if args.json:
        _json({"room": room, "created": True})
    else:
        _console().print(f"created {room.id} ({room.sid})")
    return 0


def _print_rooms(found: list[RoomInfo], url: str, *, as_json: bool) -> None:
    if as_json:
        _json(found)
        return
    columns = ("room", "sid", "speakers", "viewers", "total", "max", "livestream", "created")
    table = _table(f"rooms at {url}", columns, ids=2)
    for room in found:
        created = datetime.datetime.fromtimestamp(room.created_at / 1000)
        table.add_row(
            room.id,
            room.sid,
            str(room.counts.speaker),
            str(room.counts.viewer),
            str(room.counts.total),
            str(room.max_participants or "-"),
            "yes" if room.livestream else "no",
            created.strftime("%Y-%m-%d %H:%M:%S"),
        )
    _console().print(table)


async def participants(args: argparse.Namespace, url: str, api_key: str, api_secret: str) -> int:
    found: list[ParticipantInfo] = []
    total = 0
    cursor: str | None = None
    async with RoomService(url, api_key, api_secret) as api:
        try:
            while True:
                page = await api.list_participants(
                    args.room, tier=args.tier, limit=args.limit, cursor=cursor
                )
                total = page.total
                found.extend(page.participants)
                cursor = page.next_cursor
                if cursor is None or not args.all:
                    break
        except StagecastError as exc:
            _errors().print(f"stagecast participants: {exc.code}: {exc.message}")
            return 1
        except httpx.HTTPError as exc:
            _errors().print(f"stagecast participants: cannot reach {url}: {exc}")
            return 1
    if args.json:
        _json({"participants": found, "total": total, "next_cursor": cursor})
        return 0
    columns = ("id", "sid", "name", "tier", "kind", "tracks", "attributes")
    table = _table(f"participants of {args.room}", columns, ids=2)
    for p in found:
        table.add_row(
            p.id,
            p.sid,
            p.name,
            "viewer" if p.is_viewer else "speaker",
            p.kind,
            ",".join(t.kind for t in p.tracks),
            ", ".join(f"{k}={v}" for k, v in p.attributes.items()),
        )
    console = _console()
    console.print(table)
    more = " (more: --all)" if cursor else ""
    console.print(f"{total} in total{more}")
    return 0
