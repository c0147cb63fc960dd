"""Test plugin: the code a plugin author writes without reading cordon's internals.

Plain ``ctx.log.*`` calls, the standard ``logging`` module (here and in a "library" it
imports), sync tools that use host APIs through ``ctx.run``, event handlers in the shapes
people write them, and many sync calls at once under the default memory limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from cordon.worker import CallCancelled, Context, CordonError, Plugin

# A library logging at import time, before any call: its record must reach the host too.
logging.getLogger("author.lib").warning("library imported")

plugin = Plugin()
log = logging.getLogger("author")

EVENTS: list[Any] = []
_event_seen: asyncio.Event | None = None
_barriers: dict[int, threading.Barrier] = {}
_barrier_lock = threading.Lock()
#: How long threads wait for each other in ``meet``: a deadline, never a sleep.
MEET_TIMEOUT = 20.0


# -- logging -----------------------------------------------------------------------------


@plugin.tool
async def log_plain(ctx: Context, n: int) -> int:
    """``ctx.log.*`` called the way every Python logger is called: without ``await``."""
    for i in range(n):
        ctx.log.info("plain", i=i)
    return n


@plugin.tool
async def log_awaited(ctx: Context) -> Any:
    """Existing plugins await their log calls; that keeps working."""
    return await ctx.log.warning("awaited", password="hunter2")


@plugin.tool
def log_from_thread(ctx: Context, n: int) -> int:
    """A sync tool logs from its thread, both ways; all of it arrives before the result."""
    for i in range(n):
        ctx.log.info("threaded", i=i)
        log.info("std threaded %d", i)
    return n


class _Loud:
    """Its ``str`` logs again: the handler formatting it must not recurse."""

    def __str__(self) -> str:
        logging.getLogger("author.inner").error("logged while formatting")
        return "loud"


@plugin.tool
async def std_logging(ctx: Context) -> bool:
    logging.getLogger("author.lib.http").warning("GET %s failed: %d", "/x", 503, extra={"n": 7})
    log.info("token=ghp_%s", "A" * 36)
    log.debug("debug is below the default level")
    log.warning("%s", _Loud())
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("caught")
    return True


# -- sync tools and host APIs ------------------------------------------------------------


@plugin.tool
def sync_storage(ctx: Context, key: str, value: Any) -> Any:
    """A plain ``def`` tool using host APIs through ``ctx.run``."""
    ctx.run(ctx.storage.set(key, value))
    return ctx.run(ctx.storage.get(key))


@plugin.tool
def sync_denied(ctx: Context) -> dict[str, Any]:
    """A host API this plugin was not granted: the same typed error as from async code."""
    try:
        ctx.run(ctx.config.get("x"))
    except CordonError as exc:
        return {"error": type(exc).__name__, **exc.fields()}
    return {"ok": True}


@plugin.tool
async def run_on_loop(ctx: Context) -> str:
    """``ctx.run`` from async code would block the loop it needs: refused, not a deadlock."""
    coro = ctx.storage.get("k")
    try:
        ctx.run(coro)
    except RuntimeError as exc:
        return str(exc)
    finally:
        coro.close()
    return "ran"


@plugin.tool
def sync_wait(ctx: Context, seconds: float) -> str:
    """Blocks in ``ctx.run``; a cancelled call ends the wait with CallCancelled."""
    try:
        ctx.run(asyncio.sleep(seconds))
    except CallCancelled:
        EVENTS.append("sync_wait:cancelled")
        raise
    EVENTS.append("sync_wait:finished")
    return "waited"


@plugin.tool
def meet(parties: int) -> int:
    """Wait until ``parties`` calls are in their threads at once; so they truly overlap."""
    with _barrier_lock:
        barrier = _barriers.setdefault(parties, threading.Barrier(parties, timeout=MEET_TIMEOUT))
    barrier.wait()
    return threading.get_ident()


_hoard: list[bytearray] = []
#: Allocation step while using up the address space: a separate mmap each (over glibc's
#: 128 KiB threshold), so freeing some gives exactly that much back.
_CHUNK = 1024 * 1024


@plugin.tool
async def squeeze(keep_mib: int) -> int:
    """Take the worker's address space up to RLIMIT_AS, then give ``keep_mib`` MiB back:
    less than a thread's stack needs. Returns the MiB held."""
    try:
        while True:
            _hoard.append(bytearray(_CHUNK))
    except MemoryError:
        del _hoard[-keep_mib:]
    return len(_hoard)


# -- events ------------------------------------------------------------------------------


@plugin.on_event("build.*")
async def on_build(ctx: Context, topic, payload: object) -> None:
    """Written the way people write handlers: no ``source``, an untyped topic, an
    ``object`` payload."""
    EVENTS.append({"topic": topic, "payload": payload})
    if _event_seen is not None:
        _event_seen.set()


@plugin.tool
async def wait_event(ctx: Context) -> Any:
    """The first event the handler got (waits for it, bounded by the call's timeout)."""
    global _event_seen
    while not any(isinstance(e, dict) for e in EVENTS):
        _event_seen = asyncio.Event()
        await _event_seen.wait()
    return next(e for e in EVENTS if isinstance(e, dict))


@plugin.tool
async def events(ctx: Context) -> list[Any]:
    return list(EVENTS)


# -- ordering on the channel -------------------------------------------------------------


@plugin.tool
async def hold(ctx: Context, gate: str) -> str:
    """In flight until cancelled; says so in EVENTS."""
    await ctx.progress(0, message="holding")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        EVENTS.append(f"hold:{gate}:cancelled")
        raise
    return gate  # pragma: no cover - nothing sets the event


@plugin.tool
async def stall_until(ctx: Context, name: str, limit: float = 20.0) -> bool:
    """Hold the event loop itself (not just this task) until ``name`` exists in the
    scratch dir, so whatever the host sends meanwhile is read in one go afterwards."""
    await ctx.progress(0, message="stalling")
    await asyncio.sleep(0)  # the progress note leaves before the loop is held
    path = os.path.join(ctx.scratch_dir, name)
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
    return True


@plugin.tool
async def scratch(ctx: Context) -> str:
    return ctx.scratch_dir


@plugin.tool
async def pid(ctx: Context) -> int:
    return os.getpid()
