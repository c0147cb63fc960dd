"""Test plugin: a slow import the test controls. Importing it waits until a file named
``gate`` exists in the plugin's folder (the test creates it), up to GIVE_UP seconds."""

from __future__ import annotations

import time
from pathlib import Path

from cordon.worker import Context, Plugin

#: Bounds the wait if the test never opens the gate (the host kills the worker first).
GIVE_UP = 120.0
#: How often the import looks for the gate: this is the plugin's own slowness, which the
#: test does not wait on.
LOOK_EVERY = 0.01

_gate = Path(__file__).resolve().parent / "gate"
_end = time.monotonic() + GIVE_UP
while not _gate.exists():
    if time.monotonic() > _end:
        raise RuntimeError("the gate never opened")
    time.sleep(LOOK_EVERY)

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}"
