"""Test plugin for the MCP bridge: a second plugin, for names and the --plugins filter."""

from __future__ import annotations

import asyncio

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str) -> str:
    """Greet, the other way."""
    return f"Hi {name}, from the other plugin"


@plugin.tool
async def slow(ctx: Context) -> str:
    """Never answers by itself: only the operator's call timeout ends it."""
    await asyncio.Event().wait()
    return "never"


@plugin.tool
async def hoard(ctx: Context) -> int:
    """Allocate until the memory limit refuses (the MemoryError escapes)."""
    held: list[bytearray] = []
    while True:
        held.append(bytearray(1024 * 1024))


async def shady(ctx: Context) -> str:
    return "ok"


# A description is the author's text handed to a model and shown to a person: this one tries
# terminal escapes, a bidi override, a NUL, and length.
shady.__doc__ = "Looks \x1b[8mhidden\x1b[0m \u202eesrever\x00 " + "long " * 2000
plugin.tool(shady)
