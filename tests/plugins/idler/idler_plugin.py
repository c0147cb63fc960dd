"""Test plugin for the fleet pass's health rule: what a worker may do after its last call
answered, with nothing in flight."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

from cordon.worker import Context, Plugin

plugin = Plugin()

#: Longer than any test waits: the host kills the worker well before.
WEDGE_SECONDS = 600.0


@plugin.tool
async def wedge_later(ctx: Context, after: float) -> bool:
    """``after`` seconds from now, block the event loop (a timer's callback that never
    returns): the worker stops answering anything, with no call in flight."""
    asyncio.get_running_loop().call_later(after, time.sleep, WEDGE_SECONDS)
    return True


@plugin.tool
async def wedge_on_signal(ctx: Context) -> bool:
    """On SIGUSR1 (an asyncio signal handler, run by the loop), block the event loop: the
    test decides when the worker hangs, with no call in flight."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, time.sleep, WEDGE_SECONDS)
    return True


@plugin.tool
async def busy_in_background(ctx: Context, seconds: float) -> bool:
    """A thread that burns CPU for ``seconds`` while the loop stays free to answer."""

    def burn() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sum(range(1000))

    threading.Thread(target=burn, daemon=True).start()
    return True


@plugin.tool
async def ok(ctx: Context) -> str:
    return "ok"
