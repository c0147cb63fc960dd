"""Test plugin for the MCP bridge: each tool is one thing a bridged call can meet."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()

#: gate -> set once the plugin's task for `hold(gate)` has been cancelled.
CANCELLED: dict[str, asyncio.Event] = {}


def _cancelled(gate: str) -> asyncio.Event:
    return CANCELLED.setdefault(gate, asyncio.Event())


@plugin.tool
async def greet(ctx: Context, name: str, excited: bool = False) -> str:
    """Greet someone by name."""
    return f"Hello {name}" + ("!" if excited else "")


@plugin.tool
async def stats(ctx: Context, values: list[int]) -> dict[str, Any]:
    """Sum and count of the values (a structured result)."""
    return {"sum": sum(values), "count": len(values)}


@plugin.tool
async def squares(ctx: Context, n: int) -> list[int]:
    """The first n squares (a list result)."""
    return [i * i for i in range(n)]


@plugin.tool
async def count(ctx: Context, n: int) -> int:
    """Count to n, reporting progress at each step (and a backwards step, and a secret)."""
    for i in range(1, n + 1):
        await ctx.progress(i, total=n, message=f"step {i}")
    # Neither may reach the client: a value that goes backwards, and a token in a message.
    await ctx.progress(1, total=n, message="backwards")
    await ctx.progress(n + 1, total=n + 1, message="token ghp_" + "a" * 36)
    return n


@plugin.tool
async def hold(ctx: Context, gate: str) -> str:
    """Stay in flight until cancelled; say so with a first progress report."""
    await ctx.progress(0.5, message="started")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        _cancelled(gate).set()
        raise
    return gate


@plugin.tool
async def was_cancelled(ctx: Context, gate: str) -> bool:
    """Returns once `hold(gate)`'s task has seen its cancellation."""
    await _cancelled(gate).wait()
    return True


@plugin.tool
async def fail(ctx: Context, message: str) -> str:
    """Raise with the message."""
    raise ValueError(message)


@plugin.tool
async def crash(ctx: Context) -> str:
    """Kill the worker mid-call."""
    os._exit(3)


@plugin.tool
async def pid(ctx: Context) -> int:
    return os.getpid()


@plugin.tool
def noisy(ctx: Context) -> str:
    """Print to stdout and stderr, as careless code does (a sync tool, in a thread)."""
    print('{"jsonrpc": "2.0", "id": 99, "result": "forged"}', flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    return "ok"
