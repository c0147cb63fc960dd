"""Hostile test plugin: every way a plugin's words reach the host's text - an exception's
message and traceback, a typed cordon error's fields, log events, field names and values,
stderr, its dying words - carries terminal escapes (OSC 52 clipboard write, CSI screen
clear, a carriage return that overwrites the line, C1 CSI, bidi override) and secrets (a DSN
password, a GitHub token). The test passes both in, so they are exactly what it looks for."""

from __future__ import annotations

import os
import sys

from cordon.protocol import PermissionDenied
from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def raise_ugly(ctx: Context, text: str) -> None:
    raise ValueError(text)


@plugin.tool
async def raise_typed(ctx: Context, text: str) -> None:
    # An error type a worker may honestly send as itself: its fields are plugin text too.
    raise PermissionDenied(text, permission=text)


@plugin.tool
async def log_ugly(ctx: Context, text: str, token: str) -> str:
    ctx.log.warning(text, **{token: "x", text: text, "nested": {token: [text]}})
    print(text, file=sys.stderr, flush=True)
    return "logged"


@plugin.tool
async def die_ugly(ctx: Context, text: str) -> None:
    for _ in range(3):
        print(text, file=sys.stderr, flush=True)
    os._exit(3)
