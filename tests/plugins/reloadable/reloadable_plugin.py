"""Test plugin for hot reload: tests copy this folder and rewrite VERSION between reloads."""

from __future__ import annotations

import asyncio

from cordon.worker import Context, Plugin

VERSION = "v1"

plugin = Plugin()


@plugin.tool
def version() -> str:
    return VERSION


@plugin.tool
async def slow(ctx: Context, delay: float = 0.02) -> str:
    """Answer after ``delay`` seconds, so reloads happen while calls are in flight; a
    progress note says the call has started."""
    await ctx.progress(0, message="started")
    await asyncio.sleep(delay)
    return VERSION


@plugin.tool
async def remember(ctx: Context, value: str) -> None:
    await ctx.storage.set("remembered", value)


@plugin.tool
async def recall(ctx: Context) -> str | None:
    value: str | None = await ctx.storage.get("remembered")
    return value
