"""Test plugin for activation by events and for the call deadline during a start.

The host controls it through files in its scratch dir (the worker's cwd, the one place it may
write and the host may too), so no test has to guess how long anything takes:

* ``hold``: while it exists, ``activate`` waits (a start that does not finish);
* ``fail``: if it exists, ``activate`` raises (a start that fails).

Each ``job.<x>`` event is acknowledged by emitting ``ack.<x>`` with the payload, the worker's
pid and how many events this worker has seen, so a test can wait for exactly that.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()

ACTIVATIONS = 0
SEEN = 0


@plugin.on_activate
async def activate(ctx: Context) -> None:
    global ACTIVATIONS
    ACTIVATIONS += 1
    if os.path.exists("fail"):
        raise RuntimeError("activate told to fail")
    while os.path.exists("hold"):  # noqa: ASYNC110 - the host releases it by deleting a file
        await asyncio.sleep(0.01)


@plugin.on_event("job.*")
async def on_job(ctx: Context, topic: str, payload: Any = None, source: str = "") -> None:
    global SEEN
    SEEN += 1
    rest = topic.split(".", 1)[1]
    await ctx.events.emit(f"ack.{rest}", {"payload": payload, "pid": os.getpid(), "seen": SEEN})


@plugin.tool
async def activations(ctx: Context) -> dict[str, int]:
    """``{activations, pid, seen}`` of this worker."""
    return {"activations": ACTIVATIONS, "pid": os.getpid(), "seen": SEEN}
