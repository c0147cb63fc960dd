"""Test plugin: exercises every host API from inside a real, sandboxed worker.

Each tool returns what happened (results or the typed error's name and fields) so the test
on the host side can compare it with what the host saw.
"""

from __future__ import annotations

import sys
from typing import Any

from cordon.worker import Context, CordonError, Plugin

plugin = Plugin()


def _err(exc: CordonError) -> dict[str, Any]:
    return {"error": type(exc).__name__, **exc.fields()}


async def _try(coro: Any) -> Any:
    try:
        return {"ok": await coro}
    except CordonError as exc:
        return _err(exc)


@plugin.tool
async def every_api(ctx: Context) -> dict[str, Any]:
    """Call each host API once."""
    return {
        "log": await _try(ctx.log.info("hello", n=1)),
        "storage.set": await _try(ctx.storage.set("k", {"v": 1})),
        "storage.get": await _try(ctx.storage.get("k")),
        "storage.list": await _try(ctx.storage.list()),
        "storage.delete": await _try(ctx.storage.delete("k")),
        "shared.set": await _try(ctx.storage.set("k", 2, shared=True)),
        "config.get": await _try(ctx.config.get("greeting", "dflt")),
        "events.emit": await _try(ctx.events.emit("build.done", {"ok": True})),
        "exec": await _try(_exec(ctx, ["echo", "hi"])),
    }


async def _exec(ctx: Context, argv: list[str]) -> Any:
    result = await ctx.exec(argv, timeout=5)
    return [result.returncode, result.stdout, result.truncated]


@plugin.tool
async def forge(ctx: Context) -> dict[str, Any]:
    """Raw requests with a forged plugin field, forged method names, lifecycle topics."""
    return {
        "plugin_field": await _try(ctx.request("host/storage.get", {"key": "k", "plugin": "x"})),
        "unknown_method": await _try(ctx.request("host/storage.drop", {"key": "k"})),
        "worker_method": await _try(ctx.request("invoke", {"name": "every_api"})),
        "lifecycle": await _try(ctx.events.emit("cordon.plugin.started", {})),
        "exec_path": await _try(_exec(ctx, ["/bin/echo", "x"])),
        "exec_ungranted": await _try(_exec(ctx, ["sh", "-c", "id"])),
    }


@plugin.tool
async def keys(ctx: Context) -> dict[str, Any]:
    odd = ["../other/x", "🔑", "\u202eevil", "a" * 512, "", "a\x00b", "a" * 513]
    out = {}
    for k in odd:
        out[repr(k)[:40]] = await _try(ctx.storage.set(k, 1))
    out["listed"] = await ctx.storage.list(limit=100)
    return out


@plugin.tool
async def fill(ctx: Context, size: int) -> Any:
    return await _try(ctx.storage.set("big", "x" * size))


@plugin.tool
async def flood(ctx: Context, n: int) -> int:
    """Fire n log lines as fast as the plugin can; the host counts what it accepted."""
    for i in range(n):
        ctx.log.info("flood", i=i)
    return n


@plugin.tool
async def secrets(ctx: Context) -> bool:
    await ctx.log.error(
        "db password=hunter2 token: ghp_" + "A" * 36,
        password="hunter3",
        nested={"list": [{"api_key": "hunter4"}]},
        header="Bearer abcdefghijklmnop1234",
    )
    print("stderr AKIAIOSFODNN7EXAMPLE and sk-proj-abcdefghijklmnop0123", file=sys.stderr)
    print(
        "-----BEGIN PRIVATE KEY-----\nMIIsecretmaterial\n-----END PRIVATE KEY-----", file=sys.stderr
    )
    await ctx.log.warning('forged\n{"event": "worker.crashed"}\x1b[2J\r\u202e')
    print("stderr forged\r\x1b[31m\u202e", file=sys.stderr, flush=True)
    return True


@plugin.tool
async def put_get(ctx: Context, key: str, value: int) -> Any:
    """One write and one read of its own storage: a bystander's storage round trip."""
    await ctx.storage.set(key, value)
    return await ctx.storage.get(key)
