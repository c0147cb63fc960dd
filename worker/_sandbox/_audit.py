"""A ``sys.addaudithook`` guard: defence in depth only, never the boundary.

An audit hook runs inside the interpreter the plugin controls; memory-corrupting tricks can
sidestep it. It exists so the common escape attempts fail early, in Python, with a clear
``PermissionError`` naming the refused event, rather than deep inside libc with a bare
errno — the kernel layers (Landlock, seccomp, namespaces) are what actually hold.

Once installed a hook cannot be removed from Python code. Events (see the CPython audit
events table) refused: starting programs or processes, native code loading or calls through
ctypes (so a plugin cannot rebuild the ``ctypes`` the worker dropped), network sockets and
name resolution, and signals to anything but the worker itself.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, Final

__all__ = ["REFUSED", "install"]

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
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.dlsym/handle",
        "ctypes.call_function",
        "ctypes.cdata",
        "ctypes.cdata/buffer",
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
_CONDITIONAL: Final = frozenset({"socket.__new__", "os.kill", "import"})
_NO_IMPORT: Final = frozenset({"ctypes", "_ctypes"})
_AF_UNIX: Final = 1  # socket.AF_UNIX; not importing socket keeps the worker's start lean


def _refuse(event: str) -> PermissionError:
    return PermissionError(errno.EPERM, f"cordon sandbox refuses {event}")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audited event in the process (each open, compile, import ...), so the
    # common case is two set lookups and nothing else.
    if event in REFUSED:
        raise _refuse(event)
    if event not in _CONDITIONAL:
        return
    if event == "import":
        name = args[0] if args else ""
        if isinstance(name, str) and name.partition(".")[0] in _NO_IMPORT:
            raise _refuse(f"import {name}")
    elif event == "socket.__new__":
        # socket.socketpair() wraps its two AF_UNIX ends through socket.__new__.
        if len(args) > 1 and args[1] != _AF_UNIX:
            raise _refuse(event)
    elif event == "os.kill" and args and args[0] != os.getpid():
        raise _refuse(event)


def install() -> None:
    sys.addaudithook(_hook)
