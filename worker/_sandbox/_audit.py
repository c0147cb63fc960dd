"""A ``sys.addaudithook`` guard: defence in depth only, never the boundary.

An audit hook runs inside the interpreter the plugin controls, and ctypes (allowed: numpy,
pandas and much else need it) reaches libc without any audit event. So no guarantee rests on
this hook: every event it refuses is refused again by the kernel (seccomp: ``execve``, fork,
``socket``; Landlock's signal scope and seccomp's pid checks: ``kill``). What it adds is an
early, readable ``PermissionError`` naming the refused event instead of a bare errno deep
inside libc, and one less step for a plugin that tries.

Its state is not reachable through anything a plugin can rebind: the hook is a closure over
frozensets and values bound when it is installed, reading no module global, builtin or
attribute at call time (emptying ``REFUSED``, clearing this module or rebinding
``os.getpid`` or ``builtins.PermissionError`` changes nothing), and CPython offers no way to
remove an installed hook. A plugin digging the function object out of ``gc`` to rewrite its
closure cells or code, or writing memory through ctypes, can still disarm it — which is
exactly why no guarantee rests on it.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = ["REFUSED", "install"]

#: Events refused outright (see the CPython audit events table). For documentation and
#: tests; the hook works on its own copy.
REFUSED: Final = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.killpg",
        "subprocess.Popen",
        "pty.spawn",
        "socket.bind",
        "socket.connect",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "socket.sendto",
        "socket.sendmsg",
        "socket.sethostname",
    }
)
_AF_UNIX: Final = 1  # socket.AF_UNIX; not importing socket keeps the worker's start lean


def _make_hook(pid: int) -> Callable[[str, tuple[Any, ...]], None]:
    # Everything the hook touches is bound here, once: locals of this frame, closed over.
    refused = frozenset(REFUSED)
    conditional = frozenset({"socket.__new__", "os.kill"})
    af_unix = _AF_UNIX
    eperm = errno.EPERM
    permission_error = PermissionError
    length = len

    def hook(event: str, args: tuple[Any, ...]) -> None:
        # Called for every audited event in the process (each open, compile, import ...), so
        # the common case is two set lookups and nothing else.
        if event in refused:
            raise permission_error(eperm, "cordon sandbox refuses " + event)
        if event not in conditional:
            return
        if event == "socket.__new__":
            # socket.socketpair() wraps its two AF_UNIX ends through socket.__new__.
            if length(args) > 1 and args[1] != af_unix:
                raise permission_error(eperm, "cordon sandbox refuses " + event)
        elif args and args[0] != pid:
            raise permission_error(eperm, "cordon sandbox refuses " + event)

    return hook


def install() -> None:
    sys.addaudithook(_make_hook(os.getpid()))
