"""Reads /proc/self/cgroup at import time: the first line of plugin code that runs."""

from __future__ import annotations

from cordon.worker import Context, Plugin

with open("/proc/self/cgroup", encoding="ascii") as _f:
    AT_IMPORT = _f.read()

plugin = Plugin()


@plugin.tool
async def at_import(ctx: Context) -> str:
    return AT_IMPORT
