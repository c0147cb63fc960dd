"""Hostile test plugin: each tool attempts one escape and lets the refusal propagate, so the
host sees it as a typed PluginError carrying the original exception type and errno text."""

from __future__ import annotations

import os
import socket
from typing import Any

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def read_file(ctx: Context, path: str) -> str:
    with open(path, "rb") as f:
        return f.read(64).decode("latin-1")


@plugin.tool
async def write_file(ctx: Context, path: str) -> int:
    with open(path, "w") as f:
        return f.write("escaped")


@plugin.tool
async def connect(ctx: Context, host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5):
        pass


@plugin.tool
async def resolve(ctx: Context, host: str) -> Any:
    return socket.getaddrinfo(host, 80)


@plugin.tool
async def shell(ctx: Context) -> int:
    return os.system("id > /dev/null")


@plugin.tool
async def spawn(ctx: Context) -> int:
    import subprocess

    return subprocess.run(["/bin/true"], check=False).returncode


@plugin.tool
async def fork_exec(ctx: Context) -> int:
    """Below subprocess: no audit event on this path, the kernel must say no."""
    import _posixsubprocess

    fork_exec: Any = _posixsubprocess.fork_exec
    r, w = os.pipe()
    return int(
        fork_exec(
            [b"/bin/sh", b"-c", b"true"], [b"/bin/sh"], True, (w,), None, None,
            -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, True,
        )
    )  # fmt: skip


@plugin.tool
async def fork(ctx: Context) -> int:
    return os.fork()


@plugin.tool
async def environment(ctx: Context) -> dict[str, str]:
    return dict(os.environ)


@plugin.tool
async def signal_host(ctx: Context, pid: int) -> None:
    os.kill(pid, 0)


@plugin.tool
async def raise_limit(ctx: Context) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard + 1, hard + 1))


@plugin.tool
async def load_ctypes(ctx: Context) -> str:
    import ctypes

    return repr(ctypes.CDLL(None))


@plugin.tool
async def reuse_sandbox_native(ctx: Context) -> int:
    """The lock-down's own syscall helper is still importable: it must not work any more."""
    from cordon.worker._sandbox import _native

    return _native.native().syscall(_native.NR.UNSHARE, 0x40000000)


@plugin.tool
async def scratch_roundtrip(ctx: Context) -> str:
    with open("note.txt", "w") as f:  # cwd is the scratch dir
        f.write("kept")
    with open("note.txt") as f:
        return f.read()


def _raw_syscall(nr: int, args: list[Any], fd: int) -> int:
    """``syscall(2)`` through ctypes: no audit event, nothing Python-level in the way.

    Arguments: ints as C longs; ``"@fd"`` the fd opened for the call; ``"@self"`` this
    worker's pid; ``"buf:N"`` the address of N zeroed bytes; ``"hex:H"`` the address of the
    bytes H; any other string its address as a NUL-terminated C string."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    keep: list[Any] = []
    cargs: list[Any] = []
    for a in args:
        if a == "@fd":
            cargs.append(ctypes.c_long(fd))
        elif a == "@self":
            cargs.append(ctypes.c_long(os.getpid()))
        elif isinstance(a, str) and a.startswith("hex:"):
            data = bytes.fromhex(a[4:])
            buf = ctypes.create_string_buffer(data, len(data))
            keep.append(buf)
            cargs.append(ctypes.c_long(ctypes.addressof(buf)))
        elif isinstance(a, str):
            size = int(a[4:]) if a.startswith("buf:") else 0
            buf = (
                ctypes.create_string_buffer(size)
                if size
                else ctypes.create_string_buffer(a.encode())
            )
            keep.append(buf)
            cargs.append(ctypes.c_long(ctypes.addressof(buf)))
        else:
            cargs.append(ctypes.c_long(a))
    ctypes.set_errno(0)
    rc = int(libc.syscall(ctypes.c_long(nr), *cargs))
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


@plugin.tool
async def syscall(
    ctx: Context, nr: int, args: list[Any], open_path: str | None = None, open_flags: int = 0
) -> int:
    fd = os.open(open_path, open_flags) if open_path is not None else -1
    try:
        return _raw_syscall(nr, args, fd)
    finally:
        if fd >= 0:
            os.close(fd)


@plugin.tool
async def pid(ctx: Context) -> int:
    return os.getpid()


@plugin.tool
async def ipc_get(ctx: Context, kind: str, key: int, create: bool) -> int:
    """shmget/msgget/semget (or mq_open) through ctypes; an id (0 for a message queue), or
    the kernel's errno as OSError."""
    if kind == "mq":  # POSIX message queue: mq_open(name, O_RDWR [| O_CREAT], 0600, NULL)
        fd = _raw_syscall(240, [f"cordon-{key}", 0o102 if create else 0o2, 0o600, 0], -1)
        os.close(fd)
        return 0
    nr, size = {"shm": (29, 4096), "msg": (68, 0), "sem": (64, 1)}[kind]
    flags = 0o1600 if create else 0  # IPC_CREAT | 0600
    return _raw_syscall(nr, [key, size, flags] if kind != "msg" else [key, flags], -1)
