"""Test plugin: things that need the worker's event loop while no request is coming.

An idle worker waits for the next request without going back to its event loop; these are
the events that must still reach the loop then: an asyncio signal handler, and a thread
handing the loop a callback.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def arm_signal(ctx: Context) -> bool:
    """On SIGUSR1 (an asyncio signal handler), emit ``waker.signal``."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: loop.create_task(ctx.events.emit("waker.signal"))
    )
    return True


@plugin.tool
async def arm_thread(ctx: Context) -> bool:
    """A thread waits until SIGUSR2 (a plain handler, so no wake-up fd is involved), then
    hands the loop a callback that emits ``waker.thread``."""
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    signal.signal(signal.SIGUSR2, lambda *_: gate.set())

    def later() -> None:
        gate.wait()
        loop.call_soon_threadsafe(lambda: loop.create_task(ctx.events.emit("waker.thread")))

    threading.Thread(target=later, daemon=True).start()
    return True


@plugin.tool
async def echo(ctx: Context, value: Any = None) -> Any:
    return value
