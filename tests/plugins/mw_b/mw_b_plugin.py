"""Test plugin: middleware that marks the calls it sees, so tests can read the chain's order.

``fail = "b"`` in the arguments makes its before_request middleware raise, and
``fail = "b-hang"`` makes it hang (until the call times out).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cordon.worker import Plugin

plugin = Plugin()


@plugin.middleware(phase="before_request")
async def b_before(request: dict[str, Any]) -> dict[str, Any]:
    args = dict(request["arguments"])
    if args.get("fail") == "b":
        raise RuntimeError("b_before refuses")
    if args.get("fail") == "b-hang":
        await asyncio.sleep(3600)
    if "trail" in args:
        args["trail"] = [*args["trail"], "b:before"]
    return {**request, "arguments": args}


@plugin.middleware(phase="after_response")
async def b_after(request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    result = response["result"]
    if isinstance(result, list):
        result = [*result, "b:after"]
    return {"result": result}


@plugin.tool
def trail(trail: list[str], fail: str | None = None) -> list[str]:
    return [*trail, "handler"]
