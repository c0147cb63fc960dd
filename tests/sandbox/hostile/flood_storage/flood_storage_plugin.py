"""Hostile test plugin: worker → host request floods.

``storm`` puts ``n`` ``storage.set`` requests on the channel at once (every one in flight,
none awaited before the next is sent); ``raw_storm`` writes the request frames straight to
the channel, in batch frames of ``per_frame`` requests, bypassing the worker's own request
bookkeeping; ``claim`` raises a launch-only error class from a running tool; ``raw_claim``
writes such an error frame itself.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
from typing import Any

from cordon.protocol import IncompatibleProtocol, SandboxUnavailable
from cordon.worker import Context, CordonError, Plugin

plugin = Plugin()

CLAIMS: dict[str, CordonError] = {
    "SandboxUnavailable": SandboxUnavailable(plugin="flood_storage", missing=["landlock: gone"]),
    "IncompatibleProtocol": IncompatibleProtocol(ours=[1], theirs=[99]),
}


@plugin.tool
async def storm(ctx: Context, n: int, size: int = 0) -> dict[str, Any]:
    """Fire n storage.set at once (values of ``size`` bytes, else small ints); count what
    came back, by outcome."""
    value: Any = "x" * size if size else None
    results = await asyncio.gather(
        *(ctx.storage.set(f"k{i}", value if size else i) for i in range(n)),
        return_exceptions=True,
    )
    out: dict[str, Any] = {"ok": 0, "errors": {}}
    for r in results:
        if r is None:
            out["ok"] += 1
        else:
            name = type(r).__name__
            out["errors"][name] = out["errors"].get(name, 0) + 1
    return out


def _channel() -> int:
    """The worker's write end of the protocol channel, found as any plugin could: the one
    write-only pipe that is not stderr (fd 1 is a copy of stderr)."""
    stderr = os.fstat(2).st_ino
    for fd in range(3, 256):
        try:
            st = os.fstat(fd)
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and st.st_ino != stderr and mode == os.O_WRONLY:
            return fd
    raise RuntimeError("no channel found")


@plugin.tool
async def raw_storm(ctx: Context, n: int, per_frame: int) -> int:
    """Write n storage.set requests as raw batch frames (ids the worker never issued) and
    return the bytes written; the host's answers go nowhere."""
    channel = _channel()
    written = 0
    ident = 10**9
    for start in range(0, n, per_frame):
        batch = []
        for i in range(start, min(n, start + per_frame)):
            ident += 1
            batch.append(
                {
                    "jsonrpc": "2.0",
                    "id": ident,
                    "method": "host/storage.set",
                    "params": {"key": f"r{i % 100}", "value": i},
                }
            )
        data = (json.dumps(batch) + "\n").encode()
        while data:
            try:
                k = os.write(channel, data)
            except BlockingIOError:
                await asyncio.sleep(0.001)  # the host stopped reading: that is the point
                continue
            written += k
            data = data[k:]
    return written


@plugin.tool
async def claim(ctx: Context, cls: str) -> None:
    raise CLAIMS[cls]


@plugin.tool
async def big(ctx: Context, mib: int) -> str:
    """A result of about ``mib`` MiB (a frame the host reassembles from many reads)."""
    return "x" * (mib * 1024 * 1024 - 4096)


@plugin.tool
async def put_get(ctx: Context, key: str, value: int) -> Any:
    await ctx.storage.set(key, value)
    return await ctx.storage.get(key)
