"""A plugin that trips each resource limit for real, for demos and cordon's quota tests.

Every tool here does the real thing (allocate, spin, fork, open, write) and lets the kernel
limits the worker applied to itself (and the host's watchdogs) answer.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()

#: Descriptors fd_leak opened and keeps open (a leak, until release_fds).
_leaked: list[int] = []


@plugin.tool
async def ok(ctx: Context) -> str:
    """A call that succeeds (to show the worker serves again)."""
    return "ok"


@plugin.tool
async def pid(ctx: Context) -> int:
    """The worker's pid."""
    return os.getpid()


@plugin.tool
async def memory_bomb(ctx: Context, die: bool = False) -> None:
    """Allocate until RLIMIT_AS refuses. The MemoryError escapes the handler (``die=False``),
    or the worker dies of it like a runtime aborting on a failed allocation (``die=True``)."""
    hoard: list[bytearray] = []
    try:
        while True:
            hoard.append(bytearray(1024 * 1024))
    except MemoryError as exc:
        hoard.clear()
        if not die:
            raise
        sys.stderr.write("".join(traceback.format_exception(exc)))
        sys.stderr.flush()
        os._exit(1)


@plugin.tool
async def spin(ctx: Context, ignore_xcpu: bool = False) -> None:
    """Burn CPU on the event loop until RLIMIT_CPU stops it: SIGXCPU at the soft limit, or,
    with ``ignore_xcpu``, SIGKILL at the hard limit one second later."""
    if ignore_xcpu:
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    x = 0
    while True:
        x += 1


@plugin.tool
async def hold(ctx: Context, seconds: float = 30.0) -> str:
    """Stay in flight (cancellably), after a progress note saying so."""
    import asyncio

    await ctx.progress(0, message="holding")
    await asyncio.sleep(seconds)
    return "held"


@plugin.tool
def sleeper(seconds: float = 3600.0) -> None:
    """Block a thread without using CPU: only the call timeout can end this."""
    time.sleep(seconds)


@plugin.tool
async def fork_bomb(ctx: Context, attempts: int = 10) -> dict[str, Any]:
    """Try to start processes, through Python (os.fork: the audit hook answers) and straight
    at the kernel (_posixsubprocess.fork_exec, no audit event: seccomp answers). Returns the
    errno names met; a child that somehow starts exits at once."""
    import _posixsubprocess

    fork_exec: Any = _posixsubprocess.fork_exec  # typeshed's signature is narrower than C's
    out: dict[str, Any] = {"fork": [], "fork_exec": [], "children": 0}
    for _ in range(attempts):
        try:
            child = os.fork()
        except OSError as exc:
            out["fork"].append(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
        else:
            if child == 0:
                os._exit(0)
            out["children"] += 1
        try:
            errpipe_read, errpipe_write = os.pipe()
            try:
                fork_exec(
                    [b"/bin/true"], [b"/bin/true"], True, (errpipe_write,), None, None,
                    -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write,
                    True, False, -1, None, None, None, -1, None, True,
                )  # fmt: skip
                out["children"] += 1
            finally:
                os.close(errpipe_read)
                os.close(errpipe_write)
        except OSError as exc:
            out["fork_exec"].append(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
    return out


@plugin.tool
async def fork_and_hold(ctx: Context, attempts: int = 100) -> dict[str, Any]:
    """Fork children that stay alive (a fork bomb that keeps its gains), until the kernel
    refuses. Returns how many started and the errno that stopped it. The children sleep until
    killed; they share the worker's process group, so the host's stop takes them too."""
    out: dict[str, Any] = {"children": 0, "stopped_by": None}
    for _ in range(attempts):
        try:
            child = os.fork()
        except OSError as exc:
            out["stopped_by"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            break
        if child == 0:
            _sleep_forever()
        out["children"] += 1
    return out


@plugin.tool
async def escapee(ctx: Context) -> int:
    """Fork a child that leaves the worker's session and process group (setsid), so a kill of
    the worker's group misses it. Returns its pid once it has left."""
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.setsid()
        os.write(ready_w, b"!")
        _sleep_forever()
    os.close(ready_w)
    try:
        os.read(ready_r, 1)
    finally:
        os.close(ready_r)
    return child


def _sleep_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    finally:
        os._exit(0)


#: memfd descriptors memfd_hoard keeps open: their pages stay charged while they do.
_hoard: list[int] = []


@plugin.tool
async def memfd_hoard(ctx: Context, files: int, size: int) -> int:
    """Fill ``files`` anonymous in-memory files of ``size`` bytes each and keep them open.
    Their pages are memory but not address space: RLIMIT_AS and the RSS watchdog never see
    them (only file-size × open-files bound them); a memory cgroup does. Returns bytes held."""
    chunk = b"\xa5" * (1 << 20)
    for i in range(files):
        fd = os.memfd_create(f"hoard-{i}")
        _hoard.append(fd)
        left = size
        while left > 0:
            left -= os.write(fd, chunk[: min(left, len(chunk))])
    return files * size


@plugin.tool
async def fd_leak(ctx: Context, until_error: bool = True) -> int:
    """Open /dev/null and never close it, until the open-files limit says EMFILE (which
    escapes as the plugin's OSError). Returns how many it holds if it stopped otherwise."""
    while True:
        _leaked.append(os.open(os.devnull, os.O_RDONLY))
        if not until_error and len(_leaked) >= 8:
            return len(_leaked)


@plugin.tool
async def release_fds(ctx: Context) -> int:
    """Close every leaked descriptor; returns how many."""
    n = len(_leaked)
    while _leaked:
        os.close(_leaked.pop())
    return n


@plugin.tool
async def big_file(ctx: Context, size: int, default_sigxfsz: bool = False) -> int:
    """Write ``size`` bytes to a scratch file. Past the file-size limit the write fails with
    EFBIG (CPython ignores SIGXFSZ) — or, with ``default_sigxfsz``, the kernel's SIGXFSZ kills
    the worker."""
    if default_sigxfsz:
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    path = Path(ctx.scratch_dir) / "big.bin"
    chunk = b"\0" * 65536
    written = 0
    try:
        with open(path, "wb", buffering=0) as f:
            while written < size:
                written += f.write(chunk[: size - written])
    finally:
        path.unlink(missing_ok=True)
    return written


@plugin.tool
async def stdout_flood(ctx: Context, lines: int = 2000, width: int = 200) -> int:
    """print() and raw fd-1 writes in bulk, plus one huge line: none of it reaches the
    protocol channel (fd 1 is stderr in a worker)."""
    for i in range(lines):
        print(f"flood {i} " + "x" * width)
    os.write(1, b"raw " + b"y" * 100000 + b"\n")
    sys.stdout.flush()
    return lines


@plugin.tool
async def count(ctx: Context, tag: str) -> str:
    """Record one execution of ``tag`` in a scratch file that outlives the worker."""
    with open(Path(ctx.scratch_dir) / "executions", "a") as f:
        f.write(tag + "\n")
    return tag


@plugin.tool
async def executions(ctx: Context) -> list[str]:
    """Every tag count() recorded, in order, across worker restarts."""
    try:
        return (Path(ctx.scratch_dir) / "executions").read_text().split()
    except FileNotFoundError:
        return []


@plugin.tool
async def crash(ctx: Context, code: int = 3) -> None:
    """Exit at once (to drive restarts)."""
    os._exit(code)
