"""The smallest useful cordon plugin: typed tools, sync and async, with progress."""

from __future__ import annotations

import asyncio
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str, excited: bool = False) -> str:
    """Greet someone by name."""
    return f"Hello {name}" + ("!" if excited else "")


@plugin.tool
async def echo(ctx: Context, value: Any = None) -> Any:
    """Return the value it was given (the benchmark's round trip)."""
    return value


@plugin.tool
def shout(text: str) -> str:
    """A synchronous tool: runs in a worker thread so it never blocks the loop."""
    return text.upper()


@plugin.tool
async def slow_count(ctx: Context, n: int, delay: float = 0.01) -> int:
    """Count to ``n``, reporting progress after each step."""
    for i in range(1, n + 1):
        await asyncio.sleep(delay)
        await ctx.progress(i, total=n, message=f"counted {i}")
    return n


@plugin.tool
async def whoami(ctx: Context) -> dict[str, Any]:
    """What the worker knows about itself (the sandbox is visible here)."""
    import os

    return {"plugin": ctx.plugin_id, "pid": os.getpid(), "cwd": os.getcwd()}
