"""Hostile test plugin: each tool attempts one escape and lets the refusal propagate, so the
host sees it as a typed PluginError carrying the original exception type and errno text."""

from __future__ import annotations

import os
import socket
import sys
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
async def ctypes_in_sys_modules(ctx: Context) -> bool:
    return "ctypes" in sys.modules


@plugin.tool
async def scratch_roundtrip(ctx: Context) -> str:
    with open("note.txt", "w") as f:  # cwd is the scratch dir
        f.write("kept")
    with open("note.txt") as f:
        return f.read()
