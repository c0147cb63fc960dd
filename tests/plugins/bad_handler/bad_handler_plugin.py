"""Test plugin: an event handler whose signature no delivery could match."""

from __future__ import annotations

from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def ok(ctx: Context) -> str:
    return "ok"


@plugin.on_event("build.*")
async def on_build(ctx: Context, event: dict[str, Any]) -> None:
    """``event`` is not an argument the host passes: refused when the plugin is defined."""
