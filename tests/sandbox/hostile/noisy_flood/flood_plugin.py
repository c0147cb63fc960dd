"""Hostile test plugin: writes lines and log records built from the text the test hands it
(worst cases generated from the host's own redaction patterns) as fast as it can, for as long
as it is told, in a thread so its worker keeps answering."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from cordon.worker import Context, Plugin

plugin = Plugin()

#: Stderr lines at the host's cut (4 KiB), log fields at the host's per-field scan limit.
LINE = 4096
FIELD = 8192


def _fill(unit: str, size: int) -> str:
    return (unit * (size // max(1, len(unit)) + 1))[:size]


@plugin.tool
async def flood(ctx: Context, units: list[str], seconds: float) -> int:
    lines = [_fill(u, LINE).replace("\n", " ").encode() + b"\n" for u in units]
    fields = [_fill(u, FIELD) for u in units]
    deadline = time.monotonic() + seconds
    sent = 0

    def stderr_flood() -> None:
        nonlocal sent
        while time.monotonic() < deadline:
            for line in lines:
                os.write(2, line)
                sent += 1

    writer = threading.Thread(target=stderr_flood)
    writer.start()
    while time.monotonic() < deadline:
        for unit, field in zip(units, fields, strict=True):
            ctx.log.warning(field[:1024], value=field, **{_fill(unit, 200): field})
            sent += 1
            # Records queue in this worker until its loop writes them: pace just enough
            # that the queue does not outgrow the worker's own memory limit.
            await asyncio.sleep(0.0005)
    writer.join()
    return sent
