"""``python -I -m cordon.worker._zygote FD``: the template process workers are forked from.

Started once per runtime by the host (``cordon.runtime``'s ``_supervise/_zygote.py``), with
the same interpreter flags and allow-listed environment as a spawned worker. It imports the
worker's modules and everything they import (asyncio, msgspec, the server, the sandbox), never
anything of a plugin, freezes the heap for the garbage collector (so forked children do not
copy every page by touching its objects' headers), then serves fork requests on one unix
socket (``FD``, a ``SOCK_SEQPACKET`` end; its only other fds are 0-2 on ``/dev/null``).

A request is a JSON object ``{"env": {...}, "cwd": str}`` with the worker's three stdio
fds attached (``SCM_RIGHTS``; the host made the pipes, as for a spawned worker). The reply
is ``{"pid": N}`` or ``{"error": str}``. A request names no plugin: the host sends what is the
same for every worker (its start dir is the scratch dirs' parent, as a spare's; initialize
moves it into its own), so whatever the zygote keeps of it, and every later fork inherits, is
nobody's (tests/test_zygote_redteam.py reads the zygote's memory). The child is made with
``clone(CLONE_PARENT)``: it is the *host's* child (the host reaps and signals it through a
pidfd exactly like a spawned worker, and its ``PDEATHSIG`` names the host), never the
zygote's. It then drops everything of the zygote (the socket, every fd but its stdio), takes
its env and cwd, starts its own session, and enters the same launch sequence as
``python -m cordon.worker`` (:func:`cordon.worker._launch.main`): limits, namespaces,
Landlock, seccomp, then the plugin.

What the zygote itself can do: it runs as the host's uid with the host's rlimits, in the
host's namespaces and cgroup, with no-new-privs set, not dumpable (no ptrace or
``/proc/<pid>/mem`` from the same uid), ``PDEATHSIG`` to the host, cwd ``/``. It reads
nothing but its socket, writes nothing but replies, and runs no code it was not started with.
It cannot be sandboxed further (Landlock, seccomp, namespaces) without its children
inheriting the same narrowing before they know their plugin's rules.
"""

from __future__ import annotations

import array
import ctypes
import gc
import json
import os
import resource
import signal
import socket
import sys
import threading
from typing import Final, NoReturn

import msgspec

# Everything a worker imports before its plugin: imported once here, shared by every fork.
from . import _entry, _launch, _logging, _plugin, _server  # noqa: F401
from ._sandbox import _lockdown, _native

__all__ = ["FORK_FLAGS", "TID_OFFSET", "Request", "fill_pools", "main"]

PR_SET_PDEATHSIG: Final = 1
PR_SET_DUMPABLE: Final = 4
PR_SET_NO_NEW_PRIVS: Final = 38
SYS_CLONE: Final = 56  # x86_64
CLONE_PARENT: Final = 0x00008000
CLONE_CHILD_SETTID: Final = 0x01000000
#: The child is the caller's parent's child (the host's); ``CLONE_CHILD_SETTID`` has the
#: kernel write the child's tid into glibc's thread descriptor, as glibc's own ``fork`` does,
#: so ``pthread_kill``/``raise`` in the child name the child, not the zygote.
FORK_FLAGS: Final = CLONE_PARENT | CLONE_CHILD_SETTID | signal.SIGCHLD
#: Where glibc (2.26 and later, x86_64) keeps a thread's tid in its ``struct pthread``: checked
#: against ``gettid`` before the first fork (:func:`tid_slot`); the zygote refuses to serve on
#: a libc where it does not hold.
TID_OFFSET: Final = 720
#: A request (env and cwd) is small; anything larger is not from the host.
REQUEST_MAX: Final = 256 * 1024
#: Above every fd this process can hold (the hard RLIMIT_NOFILE, which only root can raise):
#: where fd-closing ends (one close_range call; a kernel without it would close each).
_FD_CEILING: Final = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1] + 1, 2**31 - 1)
#: ``sys._debugmallocstats`` prints a few KiB (a table of 32 size classes and totals).
MALLOCSTATS_MAX: Final = 1024 * 1024
#: Exit status of a forked child that could not become a worker (bad fds, cwd): the host
#: sees it exit before its hello, as with a worker that failed to start.
EXIT_CHILD_SETUP: Final = 71

_libc = ctypes.CDLL(None, use_errno=True)
# Called with the GIL held (PyDLL): nothing else runs between the fork hooks and the clone.
_raw = ctypes.PyDLL(None, use_errno=True)
_syscall = _raw.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_ulong] + [ctypes.c_void_p] * 3
_before_fork = ctypes.pythonapi.PyOS_BeforeFork
_after_child = ctypes.pythonapi.PyOS_AfterFork_Child
_after_parent = ctypes.pythonapi.PyOS_AfterFork_Parent
for _f in (_before_fork, _after_child, _after_parent):
    _f.restype = None
    _f.argtypes = []


def tid_slot() -> int:
    """The address of this thread's tid in glibc's thread descriptor, or 0 if the layout is
    not the one :data:`TID_OFFSET` assumes."""
    _libc.pthread_self.restype = ctypes.c_void_p
    base = _libc.pthread_self()
    if not base:
        return 0
    addr = int(base) + TID_OFFSET
    return addr if ctypes.c_int.from_address(addr).value == threading.get_native_id() else 0


def clone_parent(tid_addr: int) -> int:
    """Fork, the child becoming our parent's: ``os.fork``'s interpreter hooks (the import
    lock, ``random`` re-seeded and other ``register_at_fork`` handlers, thread state) around
    a raw ``clone``. Returns the child's pid in the zygote, 0 in the child."""
    _before_fork()
    pid = _syscall(SYS_CLONE, FORK_FLAGS, None, None, tid_addr, None)
    if pid == 0:
        _after_child()
        return 0
    err = ctypes.get_errno()
    _after_parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return int(pid)


def _narrow() -> None:
    host = int(os.environ.get("CORDON_HOST_PID", "0") or 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if host and os.getppid() != host:
        os._exit(_launch.EXIT_PARENT_GONE)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.chdir("/")


def _become_worker(
    sock: socket.socket, request: Request, fds: list[int], template_env: dict[str, str]
) -> NoReturn:
    """In the child: drop the zygote, become a worker. Never returns to the zygote's loop."""
    status = EXIT_CHILD_SETUP
    try:
        # Forget the socket without closing its fd: close_range below closes it, and a
        # finaliser closing that number later could hit one of the worker's own fds.
        sock.detach()
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        # Every fd of the zygote, and the received ones now on 0-2 (close_range).
        os.closerange(3, _FD_CEILING)
        # The zygote is not dumpable; a spawned worker is (the host reads its /proc). Through
        # the lock-down's own helper (the zygote's, :func:`_native.freeze`): the ctypes
        # objects the lock-down calls through anyway, not a second set (~8 copied pages).
        _native.native().syscall(_native.NR.PRCTL, PR_SET_DUMPABLE, 1, 0, 0, 0, name="dumpable")
        # The worker's env exactly; only what differs from the zygote's is touched (each
        # putenv/unsetenv rewrites the C environ). Compared with the template's own copy, a
        # plain dict: reading os.environ (a mapping that decodes every key and value it
        # hands out) was ~0.1 ms and ~40 copied pages of each start.
        env = request.env
        for key in template_env.keys() - env.keys():
            del os.environ[key]
        for key, value in env.items():
            if template_env.get(key) != value:
                os.environ[key] = value
        os.chdir(request.cwd)
        status = _launch.EXIT_BAD_HANDSHAKE
        _launch.main()
    except BaseException as exc:
        try:
            os.write(2, f"cordon zygote child: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(status)


class Request(msgspec.Struct):
    """A fork request: the worker's whole env and its start dir (nothing of a plugin)."""

    env: dict[str, str]
    cwd: str


#: Decoded and checked in C: the zygote's own Python (``json``'s decoder, the checks) wrote
#: to ~40 pages per request that it shares with every live child, each a copy to make on
#: the way to the clone.
_REQUEST: Final = msgspec.json.Decoder(Request)


def _receive(sock: socket.socket) -> tuple[Request | None, list[int]] | None:
    """The next request and its fds; ``(None, [])`` for one refused (answered here);
    ``None`` at EOF."""
    fds = array.array("i")
    msg, anc, flags, _ = sock.recvmsg(REQUEST_MAX, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not msg:
        for fd in fds:
            os.close(fd)
        return None
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 3:
            raise ValueError("a request carries a JSON object and exactly three fds")
        request = _REQUEST.decode(msg)
    except ValueError as exc:  # msgspec's DecodeError and ValidationError are ValueErrors
        for fd in fds:
            os.close(fd)
        sock.send(
            json.dumps({"error": f"a request is {{'env': {{...}}, 'cwd': str}}: {exc}"}).encode()
        )
        return None, []
    return request, list(fds)


def _pool_holes() -> list[tuple[int, int]]:
    """``(block size, free blocks)`` of each of CPython's small-object size classes, from
    ``sys._debugmallocstats`` (its table goes to the C stderr: caught in a memfd). Empty
    where the table is not there to read (another allocator, another interpreter)."""
    out = os.memfd_create("cordon-mallocstats")
    saved = os.dup(2)
    try:
        os.dup2(out, 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
        text = os.pread(out, MALLOCSTATS_MAX, 0).decode("ascii", "replace")
    finally:
        os.close(saved)
        os.close(out)
    holes = []
    for line in text.splitlines():
        # "class size num-pools blocks-in-use avail-blocks": five integers, nothing else.
        cells = line.split()
        if len(cells) == 5 and all(c.isdigit() for c in cells):
            holes.append((int(cells[1]), int(cells[4])))
    return holes


def fill_pools() -> int:
    """Take every free block of the small-object pools the template's objects sit in, for
    good; returns how many.

    After the imports those pools are full of holes, one or more per size class, spread
    over every arena. A child's first objects of each size would land in them, and each
    such object copies the page it lands on (and its pool's header page): pages the child
    shares with the zygote otherwise. With the holes taken, a child's objects fill fresh
    pools, side by side, and the zygote's pages stay shared. ~3,000 blocks (~300 KiB of
    the zygote's own memory, once), ~1.5 ms; measured 0.1-0.15 MiB less USS per idle
    forked worker, of ~4.5 (benchmarks/bench_worker_memory.py)."""
    malloc = ctypes.pythonapi.PyObject_Malloc
    malloc.restype = ctypes.c_void_p
    malloc.argtypes = [ctypes.c_size_t]
    taken = 0
    for size, free in _pool_holes():
        for _ in range(free):
            # Never freed, never written: the blocks only have to be not free.
            if malloc(size):
                taken += 1
    return taken


def serve(sock: socket.socket) -> NoReturn:
    tid_addr = tid_slot()
    threads = len(os.listdir("/proc/self/task"))
    if not tid_addr or threading.active_count() != 1 or threads != 1:
        why = "cannot fork safely here (more than one thread, or an unknown libc layout)"
        sock.send(json.dumps({"error": why}).encode())
        os._exit(1)
    _lockdown.freeze()
    _launch.warm()
    # The env every child starts from (nothing here sets one): see _become_worker.
    template_env = dict(os.environ)
    gc.collect()
    fill_pools()
    # Everything alive now is the template's: never collected, so the collector's passes in
    # a child do not write to (and copy) these pages.
    gc.freeze()
    sock.send(json.dumps({"ready": os.getpid()}).encode())
    while True:
        got = _receive(sock)
        if got is None:
            os._exit(0)  # the host closed its end: the runtime is done with us
        request, fds = got
        if request is None:
            continue
        try:
            pid = clone_parent(tid_addr)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"error": str(exc)}).encode())
            continue
        if pid == 0:
            _become_worker(sock, request, fds, template_env)
        for fd in fds:
            os.close(fd)
        sock.send(b'{"pid":%d}' % pid)


#: Where the zygote keeps its socket; every fd above it is closed.
SOCKET_FD: Final = 3


def main() -> NoReturn:
    fd = int(sys.argv[1])
    if fd != SOCKET_FD:
        os.dup2(fd, SOCKET_FD, inheritable=False)
        os.close(fd)
    # The host passed only this one (close_fds); a zygote holds nothing else, whoever ran it.
    os.closerange(SOCKET_FD + 1, _FD_CEILING)
    sock = socket.socket(fileno=SOCKET_FD)
    _narrow()
    serve(sock)


if __name__ == "__main__":
    main()
