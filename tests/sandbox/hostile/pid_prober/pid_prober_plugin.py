"""Hostile test plugin: reaches for another process (the zygote, the host, a sibling worker)
through raw syscalls, past every Python-level wrapper, and tries to make processes of its own.

Each probe answers "ok" when the kernel let it through, else the errno's name. Signal
probes send signal 0 (an existence check that changes nothing), so a probe that wrongly
succeeds still harms no one."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# x86_64 numbers.
SYS = {
    "kill": 62,
    "tgkill": 234,
    "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297,
    "pidfd_open": 434,
    "ptrace": 101,
    "process_vm_readv": 310,
    "kcmp": 312,
    "get_robust_list": 274,
    "move_pages": 279,
    "migrate_pages": 256,
    "sched_getattr": 315,
    "sched_getparam": 143,
    "sched_getscheduler": 145,
    "sched_rr_get_interval": 148,
    "sched_getaffinity": 204,
    "getpgid": 121,
    "getsid": 124,
    "prlimit64": 302,
    "getpriority": 140,
    "ioprio_get": 252,
    "capget": 125,
    "fork": 57,
    "clone": 56,
    "clone3": 435,
}
PTRACE_SEIZE = 0x4206
PTRACE_DETACH = 17
KCMP_VM = 1
CLONE_PARENT = 0x00008000
SIGCHLD = 17
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _raw(name: str, *args: Any) -> str:
    ctypes.set_errno(0)
    ret = _syscall(SYS[name], *args)
    if ret < 0:
        err = ctypes.get_errno()
        return errno.errorcode.get(err, str(err))
    return "ok"


def _probes(pid: int) -> dict[str, Callable[[], str]]:
    buf = ctypes.create_string_buffer(4096)
    head = ctypes.c_void_p()
    size = ctypes.c_size_t()
    mine = os.getpid()
    uid = os.getuid()
    local = _Iovec(ctypes.addressof(buf), 8)
    # Forked from the same template, the target has this very object at this address.
    remote = _Iovec(id(None), 8)
    cap_header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, pid)
    c_int, c_long, c_ulong = ctypes.c_int, ctypes.c_long, ctypes.c_ulong

    def ptrace() -> str:
        got = _raw("ptrace", c_long(PTRACE_SEIZE), c_long(pid), None, None)
        if got == "ok":  # never leave it attached, whatever the test then says
            _raw("ptrace", c_long(PTRACE_DETACH), c_long(pid), None, None)
        return got

    return {
        "kill": lambda: _raw("kill", c_int(pid), c_int(0)),
        "kill_group": lambda: _raw("kill", c_int(-pid), c_int(0)),
        "tgkill": lambda: _raw("tgkill", c_int(pid), c_int(pid), c_int(0)),
        "rt_sigqueueinfo": lambda: _raw("rt_sigqueueinfo", c_int(pid), c_int(0), buf),
        "rt_tgsigqueueinfo": lambda: _raw(
            "rt_tgsigqueueinfo", c_int(pid), c_int(pid), c_int(0), buf
        ),
        "pidfd_open": lambda: _close_fd(_syscall(SYS["pidfd_open"], c_int(pid), c_int(0))),
        "ptrace": ptrace,
        "process_vm_readv": lambda: _raw(
            "process_vm_readv",
            c_int(pid),
            ctypes.byref(local),
            c_ulong(1),
            ctypes.byref(remote),
            c_ulong(1),
            c_ulong(0),
        ),
        "kcmp": lambda: _raw("kcmp", c_int(mine), c_int(pid), c_int(KCMP_VM), None, None),
        "get_robust_list": lambda: _raw(
            "get_robust_list", c_int(pid), ctypes.byref(head), ctypes.byref(size)
        ),
        "move_pages": lambda: _raw(
            "move_pages", c_int(pid), c_ulong(0), None, None, None, c_int(0)
        ),
        "sched_getattr": lambda: _raw("sched_getattr", c_int(pid), buf, c_int(56), c_int(0)),
        "sched_getparam": lambda: _raw("sched_getparam", c_int(pid), buf),
        "sched_getscheduler": lambda: _raw("sched_getscheduler", c_int(pid)),
        "sched_rr_get_interval": lambda: _raw("sched_rr_get_interval", c_int(pid), buf),
        "sched_getaffinity": lambda: _raw("sched_getaffinity", c_int(pid), c_int(128), buf),
        "getpgid": lambda: _raw("getpgid", c_int(pid)),
        "getsid": lambda: _raw("getsid", c_int(pid)),
        "prlimit64": lambda: _raw("prlimit64", c_int(pid), c_int(7), None, buf),
        "getpriority_process": lambda: _raw("getpriority", c_int(0), c_int(pid)),
        "getpriority_group": lambda: _raw("getpriority", c_int(1), c_int(pid)),
        "getpriority_user": lambda: _raw("getpriority", c_int(2), c_int(uid)),
        "ioprio_process": lambda: _raw("ioprio_get", c_int(1), c_int(pid)),
        "ioprio_group": lambda: _raw("ioprio_get", c_int(2), c_int(pid)),
        "ioprio_user": lambda: _raw("ioprio_get", c_int(3), c_int(uid)),
        "capget": lambda: _raw("capget", cap_header, buf),
        "proc_status": lambda: _open(f"/proc/{pid}/status"),
        "proc_environ": lambda: _open(f"/proc/{pid}/environ"),
        "proc_cmdline": lambda: _open(f"/proc/{pid}/cmdline"),
        "proc_mem": lambda: _open(f"/proc/{pid}/mem"),
        # An open /proc/<pid> directory is a handle pidfd_send_signal accepts.
        "proc_dir": lambda: _open(f"/proc/{pid}", os.O_DIRECTORY),
    }


def _open(path: str, flags: int = 0) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    try:
        if not flags & os.O_DIRECTORY:
            os.read(fd, 64)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    finally:
        os.close(fd)
    return "ok"


def _close_fd(fd: int) -> str:
    if fd < 0:
        err = ctypes.get_errno()
        return errno.errorcode.get(err, str(err))
    os.close(fd)
    return "ok"


@plugin.tool
async def pid(ctx: Context) -> int:
    return os.getpid()


@plugin.tool
async def reach(ctx: Context, pid: int) -> dict[str, str]:
    """Every pid-taking probe against ``pid``."""
    return {name: probe() for name, probe in _probes(pid).items()}


def _clone(flags: int) -> str:
    ctypes.set_errno(0)
    ret = _syscall(SYS["clone"], ctypes.c_ulong(flags), None, None, None, None)
    if ret == 0:
        os._exit(0)  # the child, if the kernel ever made one: gone at once
    if ret < 0:
        err = ctypes.get_errno()
        return errno.errorcode.get(err, str(err))
    return "ok"


@plugin.tool
async def make_process(ctx: Context) -> dict[str, str]:
    """Every way to a new process; a thread (allowed) as the control."""

    def py_fork() -> str:
        try:
            child = os.fork()
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if child == 0:
            os._exit(0)
        return "ok"

    def raw_fork() -> str:
        ctypes.set_errno(0)
        ret = _syscall(SYS["fork"])
        if ret == 0:
            os._exit(0)
        return "ok" if ret > 0 else errno.errorcode.get(ctypes.get_errno(), "?")

    def clone3() -> str:
        args = (ctypes.c_uint64 * 11)()
        args[4] = SIGCHLD  # exit_signal
        ctypes.set_errno(0)
        ret = _syscall(SYS["clone3"], args, ctypes.c_size_t(ctypes.sizeof(args)))
        if ret == 0:
            os._exit(0)
        return "ok" if ret > 0 else errno.errorcode.get(ctypes.get_errno(), "?")

    ran: list[bool] = []
    thread = threading.Thread(target=lambda: ran.append(True))
    thread.start()
    thread.join()
    return {
        "os.fork": py_fork(),
        "fork": raw_fork(),
        "clone": _clone(SIGCHLD),
        "clone_parent": _clone(CLONE_PARENT | SIGCHLD),
        "clone3": clone3(),
        "thread": "ok" if ran == [True] else "not run",
    }


_PAGE = 4096


def _readable(addr: int, size: int, r: int, w: int) -> bytes | None:
    """``size`` bytes at ``addr`` copied by the kernel (through a pipe): ``None`` where
    unmapped (EFAULT), never a crash."""
    try:
        os.write(w, (ctypes.c_char * size).from_address(addr))
    except OSError:
        return None
    return os.read(r, size)


#: How far each side of an anchor (an object the worker got from the zygote) the scan reads.
HEAP_SCAN = 256 * 1024 * 1024
#: Whatever a path holds after this is returned: the scan never holds a name it looks for
#: (a needle passed in would be found in the scan's own memory).
_MARKER = b"/scratch/"


@plugin.tool
async def scratch_names(ctx: Context) -> list[str]:
    """Every name that follows ``/scratch/`` in the heap around objects this worker got from
    the zygote: the scratch dirs (one per plugin) of whatever fork requests it saw."""
    import json
    import re

    name = re.compile(rb"[A-Za-z0-9_.-]{1,64}")
    sbrk = _libc.sbrk
    sbrk.restype = ctypes.c_void_p
    # The objects' arenas, and the top of the C heap (glibc's brk area, where libc's own
    # buffers live).
    tops = (id(json), id(os.environ), id(ctypes), id(threading), sbrk(0) or 0)
    anchors = {top >> 12 for top in tops}
    pages: set[int] = set()
    for anchor in anchors:
        pages.update(range(anchor - HEAP_SCAN // _PAGE, anchor + HEAP_SCAN // _PAGE))
    r, w = os.pipe()
    found: set[str] = set()
    try:
        for page_no in sorted(pages):
            page = _readable(page_no * _PAGE, _PAGE, r, w)
            if page is None:
                continue
            at = page.find(_MARKER)
            while at != -1:
                m = name.match(page, at + len(_MARKER))
                if m:
                    found.add(m.group().decode())
                at = page.find(_MARKER, at + 1)
    finally:
        os.close(r)
        os.close(w)
    return sorted(found)
