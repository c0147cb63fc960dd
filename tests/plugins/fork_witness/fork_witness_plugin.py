"""Test plugin: what a worker holds (its fds by inode, its random state) and whether it can
reach a given process (signals, pidfd, /proc, ptrace-like reads)."""

from __future__ import annotations

import os
import random
import secrets
import signal
import stat
import uuid

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def fds(ctx: Context) -> dict[str, list[int]]:
    """Every open fd (asked fd by fd: /proc is outside the sandbox): [inode, file type]."""
    found: dict[str, list[int]] = {}
    for fd in range(4096):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        found[str(fd)] = [st.st_ino, stat.S_IFMT(st.st_mode)]
    return found


@plugin.tool
async def randomness(ctx: Context) -> dict[str, str]:
    return {
        "random": repr(random.random()),
        "secrets": secrets.token_hex(16),
        "urandom": os.urandom(16).hex(),
        "uuid4": str(uuid.uuid4()),
        "hash": str(hash("cordon-fork-witness")),
    }


@plugin.tool
async def ids(ctx: Context) -> dict[str, int]:
    return {"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0)}


@plugin.tool
async def dumpable(ctx: Context) -> int:
    """``prctl(PR_GET_DUMPABLE)``: 1 where the host (same uid) may read this worker's /proc."""
    import ctypes

    return int(ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0))


def _try(fn: object) -> str:
    try:
        fn()  # type: ignore[operator]
    except OSError as exc:
        return type(exc).__name__
    return "ok"


@plugin.tool
async def reach(ctx: Context, pid: int, fd: int = 3) -> dict[str, str]:
    """Every way tried to touch process ``pid``: "ok" where it worked, else the error."""

    def pidfd() -> None:
        os.close(os.pidfd_open(pid))

    def proc_status() -> None:
        with open(f"/proc/{pid}/status", "rb") as f:
            f.read()

    def proc_mem() -> None:
        with open(f"/proc/{pid}/mem", "rb") as f:
            f.read(1)

    def proc_fd() -> None:
        os.close(os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR))

    return {
        "signal": _try(lambda: os.kill(pid, 0)),
        "sigcont": _try(lambda: os.kill(pid, signal.SIGCONT)),
        "pidfd": _try(pidfd),
        "proc_status": _try(proc_status),
        "proc_mem": _try(proc_mem),
        "proc_fd": _try(proc_fd),
    }


@plugin.tool
async def thread_record(ctx: Context) -> dict[str, int]:
    """The tid glibc keeps for this thread (which ``pthread_getcpuclockid``, robust mutexes
    and pthread calls on other threads use) and the kernel's, for the main thread (async: it
    runs on the loop, in the thread the fork made): a fork that did not update glibc's record
    would still name the zygote's thread."""
    import threading
    import time

    clock = time.pthread_getcpuclockid(threading.get_ident())
    # Linux encodes a thread CPU clock as (~tid << 3) | 6.
    return {"glibc": ~(clock >> 3), "kernel": threading.get_native_id()}
