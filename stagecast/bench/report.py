"""Runs one benchmark suite and prints its table and `RESULT` lines."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from stagecast.bench import Result, machine


async def run_suite(module: Any, args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    console.print(f"[bold]stagecast bench {args.suite}[/] on {machine()}")
    results: list[Result] = await module.run(args)
    table = Table(title=f"bench {args.suite} - {datetime.date.today().isoformat()}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("note")
    for r in results:
        table.add_row(r.name, f"{r.value:,.3f}".rstrip("0").rstrip("."), r.unit, r.note)
    Console().print(table)
    for r in results:
        print(r.line(), flush=True)
    return 0
