"""Hostile test plugin: frames whose decode costs the most per byte, on every path a
plugin's bytes reach a decode on the host.

A ``shape`` is one of :data:`UNITS`, repeated ``n`` times in a list: the structural bytes
(``[ { , :``) of each unit are known, so a test can aim a frame just under or just over the
host's ``max-frame-values``. ``answer`` returns it (the worker encodes the answer);
``progress`` and ``log`` write a progress or log notification carrying it straight onto the
channel; ``store`` sends it as a worker → host request (``storage.set``); ``flood`` writes
``frames`` answers to calls the host never made, each of ``n`` units, as fast as the host
reads them.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterable
from typing import Any

from cordon.worker import Context, CordonError, Plugin

plugin = Plugin()

#: A unit's JSON and its structural bytes. "nested" (ten empty lists deep) cost the most
#: to decode per value measured (~125 ns); "empty" (``[]``) the most per byte.
UNITS: dict[str, tuple[str, int]] = {
    "nested": ("[" * 10 + "]" * 10, 10),
    "empty": ("[]", 1),
}


def body(n: int, shape: str) -> str:
    """``n`` units in a list: ``1 + n * per_unit + (n - 1)`` structural bytes."""
    unit, _ = UNITS[shape]
    return "[" + ",".join([unit] * n) + "]"


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


def _write(frames: Iterable[bytes]) -> int:
    """Write whole frames onto the channel, blocking (the loop does not run meanwhile, so no
    frame of the worker's own lands inside one): a host that stops reading stops us."""
    fd = _channel()
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    written = 0
    try:
        for frame in frames:
            view = memoryview(frame)
            while view:
                k = os.write(fd, view)
                view = view[k:]
                written += k
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return written


@plugin.tool
async def answer(ctx: Context, n: int, shape: str = "nested", pad: int = 0) -> Any:
    # ``pad``: a string of that many bytes first, so the costly values hide behind a long
    # stretch with no structural byte (one more comma: the count moves by one).
    return ["x" * pad, *_value(n, shape)] if pad else _value(n, shape)


def _value(n: int, shape: str) -> Any:
    # Built as the Python value the worker encodes (the same bytes as body()).
    unit: Any = []
    for _ in range(UNITS[shape][1] - 1):
        unit = [unit]
    return [unit] * n


@plugin.tool
async def progress(ctx: Context, n: int, shape: str = "nested") -> str:
    frame = (
        '{"jsonrpc":"2.0","method":"$/progress","params":{"id":'
        + str(ctx.call_id)
        + ',"progress":1,"message":"m","data":'
        + body(n, shape)
        + "}}\n"
    )
    _write([frame.encode()])
    return "sent"


@plugin.tool
async def log(ctx: Context, n: int, shape: str = "nested") -> str:
    frame = (
        '{"jsonrpc":"2.0","method":"host/log","params":{"level":"info","event":"flood",'
        '"fields":{"v":' + body(n, shape) + "}}}\n"
    )
    _write([frame.encode()])
    return "sent"


@plugin.tool
async def store(ctx: Context, n: int, shape: str = "nested") -> dict[str, Any]:
    try:
        await ctx.storage.set("k", _value(n, shape))
    except CordonError as exc:
        return {"error": type(exc).__name__, **exc.fields()}
    return {"stored": True}


@plugin.tool
async def flood(ctx: Context, frames: int, n: int, shape: str = "nested") -> int:
    """``frames`` answers to ids the host never used, each of ``n`` units; the bytes written."""
    text = body(n, shape)
    out = (
        ('{"jsonrpc":"2.0","id":' + str(10**12 + i) + ',"result":' + text + "}\n").encode()
        for i in range(frames)
    )
    return _write(out)
