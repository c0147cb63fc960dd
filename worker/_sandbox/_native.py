"""The only module of the lock-down that touches ``ctypes``.

Everything native goes through one raw ``syscall(2)`` entry point: made once by the zygote
for all its forks (:func:`freeze`), or on first use in a spawned worker, and let go by
:func:`release` once the lock-down is done. Plugins may load ctypes themselves (nothing rests
on keeping it from them: the kernel layers refuse native calls exactly as Python ones);
letting ours go is hygiene, not a boundary.

Why raw syscalls and not libc wrappers: Landlock and ``seccomp(2)`` have no glibc wrappers
on older distributions, and ``prctl``/``unshare`` through ``syscall`` keeps one calling
convention (every integer passed as a C ``long``, so the variadic ``syscall`` never sees a
32-bit int with undefined upper register bits; a struct as a pointer to its bytes).
"""

from __future__ import annotations

import os
from typing import Any, Final

__all__ = ["NR", "SyscallError", "freeze", "native", "release"]


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
        self._cast: Any = ctypes.cast
        self._void_p: Any = ctypes.c_void_p
        self._get_errno: Any = ctypes.get_errno
        self._set_errno: Any = ctypes.set_errno

    def address(self, data: bytes) -> int:
        """Where ``data``'s own bytes are: valid while ``data`` is referenced, for the kernel
        to read (never to write: a ``bytes`` is immutable)."""
        return int(self._cast(data, self._void_p).value)

    def syscall(self, nr: int, *args: int | bytes, name: str = "") -> int:
        """``syscall(nr, *args)``. A ``bytes`` argument is passed as a pointer to its own
        bytes, for a struct the kernel reads (ctypes passes ``bytes`` as ``char *``): no C
        copy, which would be a ``c_char * n`` array type made per size (a new class, ~0.1 ms
        and ~40 copied pages in a forked worker)."""
        cargs = [a if isinstance(a, bytes) else self._long(a) for a in args]
        self._set_errno(0)
        rc = int(self._fn(self._long(nr), *cargs))
        if rc == -1:
            err = int(self._get_errno())
            raise SyscallError(err, f"{name or nr}: {os.strerror(err)}")
        return rc


_instance: _Native | None = None
#: Made by the zygote before any fork (:func:`freeze`), used as is by every forked worker's
#: lock-down; ``None`` in a spawned worker.
_frozen: _Native | None = None


def freeze() -> None:
    """In the zygote (``cordon.worker._zygote``), before any fork: make the helper once.
    Making it is loading libc through ``ctypes.CDLL`` (a new ``_FuncPtr`` class each time)
    and dropping it is freeing all that again: in a forked worker, ~0.1 ms and ~40 of the
    zygote's pages copied, for an object every worker makes alike. A forked worker inherits
    the zygote's own libc handles anyway (``cordon.worker._zygote``'s globals), so the
    template adds nothing it did not hold: :func:`release` leaves it where it is."""
    global _frozen
    _frozen = _Native()


def native() -> _Native:
    global _instance
    if _instance is None:
        _instance = _frozen if _frozen is not None else _Native()
    return _instance


def release() -> None:
    """Drop the ctypes objects this package made for the lock-down (see the module
    docstring; the zygote's template, :func:`freeze`, stays)."""
    global _instance
    _instance = None
