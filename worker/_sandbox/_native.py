"""The only module of the lock-down that touches ``ctypes``.

Everything native goes through one raw ``syscall(2)`` entry point, built on first use and
dropped by :func:`release` once the lock-down is done. Plugins may load ctypes themselves
(nothing rests on keeping it from them: the kernel layers refuse native calls exactly as
Python ones); dropping ours is hygiene, so the worker keeps no libc handle it does not use.

Why raw syscalls and not libc wrappers: Landlock and ``seccomp(2)`` have no glibc wrappers
on older distributions, and ``prctl``/``unshare`` through ``syscall`` keeps one calling
convention (every argument passed as a C ``long``, so the variadic ``syscall`` never sees
a 32-bit int with undefined upper register bits).
"""

from __future__ import annotations

import os
from typing import Any, Final

__all__ = ["NR", "SyscallError", "native", "release"]


class NR:
    """x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl)."""

    PRCTL: Final = 157
    UNSHARE: Final = 272
    SECCOMP: Final = 317
    LANDLOCK_CREATE_RULESET: Final = 444
    LANDLOCK_ADD_RULE: Final = 445
    LANDLOCK_RESTRICT_SELF: Final = 446


class SyscallError(OSError):
    """A raw syscall failed; ``errno`` is the kernel's, read right after the call."""


class _Native:
    def __init__(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
        fn.restype = ctypes.c_long
        self._fn: Any = fn
        self._long: Any = ctypes.c_long
        self._buffer: Any = ctypes.create_string_buffer
        self._addressof: Any = ctypes.addressof
        self._get_errno: Any = ctypes.get_errno
        self._set_errno: Any = ctypes.set_errno

    def buffer(self, data: bytes) -> tuple[Any, int]:
        """A C copy of ``data`` and its address; keep the first item alive while in use."""
        buf = self._buffer(data, len(data))
        return buf, int(self._addressof(buf))

    def syscall(self, nr: int, *args: int | bytes, name: str = "") -> int:
        keep: list[Any] = []
        cargs: list[Any] = []
        for a in args:
            if isinstance(a, bytes):
                buf, addr = self.buffer(a)
                keep.append(buf)
                cargs.append(self._long(addr))
            else:
                cargs.append(self._long(a))
        self._set_errno(0)
        rc = int(self._fn(self._long(nr), *cargs))
        if rc == -1:
            err = int(self._get_errno())
            raise SyscallError(err, f"{name or nr}: {os.strerror(err)}")
        return rc


_instance: _Native | None = None


def native() -> _Native:
    global _instance
    if _instance is None:
        _instance = _Native()
    return _instance


def release() -> None:
    """Drop every ctypes object this package holds (see the module docstring)."""
    global _instance
    _instance = None
