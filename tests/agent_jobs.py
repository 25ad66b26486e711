"""Agent entrypoints the dispatch tests run (in this process, or in `stagecast agent-worker`)."""

from __future__ import annotations

from stagecast.agents import JobContext


async def stay(ctx: JobContext) -> None:
    """Stay in the room until it disconnects the agent (or the worker stops)."""
    await ctx.wait_for_disconnect()


async def greet(ctx: JobContext) -> None:
    """Say hello on topic `chat` with the job's metadata, then end the job."""
    await ctx.room.local_participant.send_text(f"hello {ctx.metadata}", topic="chat")
