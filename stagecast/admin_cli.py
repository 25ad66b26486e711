"""`stagecast rooms ...` and `stagecast participants ...`: the server API from the shell."""

from __future__ import annotations

import argparse
import datetime

from rich.console import Console
from rich.table import Table

from stagecast.errors import StagecastError
from stagecast.server_api import RoomService


async def rooms(args: argparse.Namespace, url: str, api_key: str, api_secret: str) -> int:
    console = Console()
    async with RoomService(url, api_key, api_secret) as api:
        try:
            if args.action == "list":
                table = Table(title=f"rooms at {url}")
                for column in ("room", "sid", "speakers", "viewers", "total", "max", "created"):
                    table.add_column(column)
                for room in await api.list_rooms():
                    created = datetime.datetime.fromtimestamp(room.created_at / 1000)
                    table.add_row(
                        room.id,
                        room.sid,
                        str(room.counts.speaker),
                        str(room.counts.viewer),
                        str(room.counts.total),
                        str(room.max_participants or "-"),
                        created.strftime("%Y-%m-%d %H:%M:%S"),
                    )
                console.print(table)
            elif not args.room:
                console.print("[red]a room id is required[/]")
                return 2
            elif args.action == "create":
                room = await api.create_room(
                    args.room, max_participants=args.max_participants, livestream=args.livestream
                )
                console.print(f"created {room.id} ({room.sid})")
            else:
                await api.delete_room(args.room)
                console.print(f"deleted {args.room}")
        except StagecastError as exc:
            console.print(f"[red]{exc.code}[/] {exc.message}")
            return 1
    return 0


async def participants(args: argparse.Namespace, url: str, api_key: str, api_secret: str) -> int:
    console = Console()
    table = Table(title=f"participants of {args.room}")
    for column in ("id", "sid", "name", "tier", "kind", "tracks", "attributes"):
        table.add_column(column)
    total = 0
    async with RoomService(url, api_key, api_secret) as api:
        cursor: str | None = None
        try:
            while True:
                page = await api.list_participants(
                    args.room, tier=args.tier, limit=args.limit, cursor=cursor
                )
                total = page.total
                for p in page.participants:
                    table.add_row(
                        p.id,
                        p.sid,
                        p.name,
                        "viewer" if p.is_viewer else "speaker",
                        p.kind,
                        ",".join(t.kind for t in p.tracks.values())
                        if isinstance(p.tracks, dict)
                        else ",".join(t.kind for t in p.tracks),
                        ", ".join(f"{k}={v}" for k, v in p.attributes.items()),
                    )
                cursor = page.next_cursor
                if cursor is None or not args.all:
                    break
        except StagecastError as exc:
            console.print(f"[red]{exc.code}[/] {exc.message}")
            return 1
    console.print(table)
    more = " (more: --all)" if cursor else ""
    console.print(f"{total} in total{more}")
    return 0
