"""A plugin whose tools fail on purpose, for demos and for cordon's own crash tests."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def ok(ctx: Context) -> str:
    """A call that succeeds (to show the plugin recovered)."""
    return "ok"


@plugin.tool
async def wait(ctx: Context, seconds: float = 30.0) -> str:
    """Stay in flight (cancellably) so other calls can crash the worker under it."""
    await ctx.progress(0, message="waiting")
    await asyncio.sleep(seconds)
    return "waited"


@plugin.tool
async def exit_now(ctx: Context, code: int = 3) -> None:
    """Leave the process immediately, skipping all cleanup."""
    sys.stderr.write(f"crashy: exiting with {code}\n")
    sys.stderr.flush()
    os._exit(code)


@plugin.tool
async def abort(ctx: Context) -> None:
    """Die by SIGABRT, as a failing C extension would."""
    os.abort()


@plugin.tool
def spin(ctx: Context) -> None:
    """Loop forever in a thread: cannot be cancelled, must be killed."""
    while True:
        pass


@plugin.tool
async def block_loop(ctx: Context, seconds: float = 3600.0) -> None:
    """Block the event loop itself (time.sleep in async code): deaf to cancel and ping."""
    time.sleep(seconds)


@plugin.tool
async def garbage(ctx: Context) -> None:
    """Write junk straight onto the protocol channel's fd, as a rogue C library might."""
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, b"this is not json\n")
        except OSError:
            continue
    await asyncio.sleep(30)


@plugin.tool
async def print_stdout(ctx: Context, text: str = "hello from print") -> str:
    """print() goes to stderr: the channel is protected from fd 1 writes."""
    print(text)
    os.write(1, b"raw write to fd 1\n")
    return "printed"


@plugin.tool
async def huge(ctx: Context, size: int = 32 * 1024 * 1024) -> str:
    """Return a result larger than the message limit."""
    return "x" * size


@plugin.tool
async def raise_error(ctx: Context, message: str = "boom") -> None:
    """Raise an ordinary exception: a PluginError, the worker lives on."""
    raise ValueError(message)


@plugin.tool
async def flood_stderr(ctx: Context, lines: int = 10000) -> int:
    """Write a lot of plugin output (bounded and forwarded by the host)."""
    for i in range(lines):
        sys.stderr.write(f"line {i} " + "y" * 100 + "\n")
    sys.stderr.write("z" * 100000 + "\n")
    sys.stderr.flush()
    return lines
