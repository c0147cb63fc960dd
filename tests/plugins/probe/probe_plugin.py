"""Test plugin: records what happened inside the worker so tests can ask afterwards."""

from __future__ import annotations

import asyncio
import contextvars
import os
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()

EVENTS: list[str] = []
GATES: dict[str, asyncio.Event] = {}
LAST_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("last_caller", default="")


def _gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


@plugin.tool
async def hold(ctx: Context, gate: str) -> str:
    """Stay in flight until ``release(gate)``; records a cancellation if it gets one."""
    EVENTS.append(f"hold:{gate}:started")
    # Tests wait on this progress note instead of polling: "I am in flight now".
    await ctx.progress(0, message="started")
    try:
        await _gate(gate).wait()
    except asyncio.CancelledError:
        EVENTS.append(f"hold:{gate}:cancelled")
        raise
    EVENTS.append(f"hold:{gate}:released")
    return gate


@plugin.tool
async def release(ctx: Context, gate: str) -> bool:
    _gate(gate).set()
    return True


@plugin.tool
async def started(ctx: Context, gate: str) -> bool:
    return f"hold:{gate}:started" in EVENTS


@plugin.tool
async def events(ctx: Context) -> list[str]:
    return list(EVENTS)


@plugin.tool
async def pid(ctx: Context) -> int:
    return os.getpid()


@plugin.tool
async def fds(ctx: Context) -> list[int]:
    # /proc is outside the sandbox's view, so ask the kernel fd by fd.
    found = []
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


@plugin.tool
async def env(ctx: Context) -> dict[str, str]:
    return dict(os.environ)


@plugin.tool
async def add(ctx: Context, a: int, b: int = 0) -> int:
    return a + b


@plugin.tool
async def typed(ctx: Context, items: list[int], label: str | None = None) -> dict[str, Any]:
    return {"sum": sum(items), "label": label}


@plugin.tool
async def task_facts(ctx: Context, tag: str) -> dict[str, Any]:
    """What a tool sees of asyncio on its first line and after it suspends."""
    first = asyncio.current_task()
    seen = LAST_CALLER.get()
    LAST_CALLER.set(tag)
    async with asyncio.timeout(30):  # refuses to work outside a task
        await asyncio.sleep(0)
    return {
        "in_task": first is not None,
        "task_name": first.get_name() if first is not None else None,
        "same_task_after_await": asyncio.current_task() is first,
        "context_seen": seen,
    }


@plugin.on_activate
async def activate(ctx: Context) -> None:
    EVENTS.append("activated")
