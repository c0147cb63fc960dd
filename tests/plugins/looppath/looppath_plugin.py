"""Test plugin: which loop path (shortcuts or public) the worker chose, and large results
built in the worker (so only the answer crosses the channel large)."""

from __future__ import annotations

from typing import Any

from cordon.worker import Context, Plugin, _loopfast

plugin = Plugin()


@plugin.tool
async def loop_path() -> str | None:
    return _loopfast.chosen


@plugin.tool
async def objects(n: int) -> list[dict[str, Any]]:
    """``n`` small objects: a result whose decoding is all object building."""
    return [{"i": i, "s": "yy", "f": i / 2, "l": [i, None, True]} for i in range(n)]


@plugin.tool
async def text(size: int) -> str:
    return "é" * (size // 2)


@plugin.tool
async def forge_large(ctx: Context, size: int) -> None:
    """Answer its own call on the channel with a large frame whose envelope looks right and
    whose body is not one JSON value (a member after ``result``), then hang."""
    import asyncio
    import gc
    import os

    server = next(o for o in gc.get_objects() if type(o).__name__ == "Server")
    frame = (
        b'{"jsonrpc":"2.0","id":'
        + str(ctx.call_id).encode()
        + b',"result":"'
        + b"x" * size
        + b'","error":{"code":1,"message":"forged"}}\n'
    )
    view = memoryview(frame)
    while view:
        try:
            view = view[os.write(server.wfd, view) :]
        except BlockingIOError:
            await asyncio.sleep(0.001)
    await asyncio.sleep(60)
