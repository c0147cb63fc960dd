"""A Landlock lock-down for a command the host runs for a plugin (host side; the host never
imports the worker package, whose own Landlock helper this mirrors).

The command may read and execute the whole system *except* the denied trees (the state dir,
which holds every plugin's scratch dir and the host's databases; every plugin directory; every
``fs-write`` path), and may write only its own fresh directory, ``/dev/null``-like devices and
the paths the operator listed. Whatever a plugin wrote — its scratch files, its own source
tree — is unreadable to the command however the path to it is spelled (an argument, a config
file that names it, ``/proc/<pid>/root/...``, a symlink): Landlock judges the path the kernel
resolved, not the text.

Landlock only *grants* beneath a path, so "everything but D" is spelled as rules on every
sibling along the way down to each denied tree: for a denied ``/a/b/c``, every entry of ``/``
but ``a``, of ``/a`` but ``b``, of ``/a/b`` but ``c``. Symlinked entries get no rule (access
through them is judged on their target). ``/proc`` is always walked into and no numeric
entry gets a rule: the command cannot open another process's ``/proc/<pid>`` (the host's
``environ``, a worker's ``root`` or ``cwd``); the launcher grants the command its own
``/proc/<pid>`` (read) before locking itself down, so ``/proc/self`` works for the command
itself (not for the children it starts, which see only their parent's). Limits: a bind
mount or a second mount of a denied tree elsewhere is readable through that other path;
entries created in an ancestor after the ruleset was built are not readable to that run.

How it is applied: the host builds the ruleset (three syscalls, no fork involved) and passes
its fd to a tiny launcher (``python -I -S``) that sets ``no_new_privs``, calls
``landlock_restrict_self`` and ``execv``s the command. No ``preexec_fn``: the host has threads.
``no_new_privs`` also means a setuid program (``sudo``) gains nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import sys
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["LandlockUnavailable", "abi_version", "build_ruleset", "launcher_argv"]

_NR_CREATE_RULESET: Final = 444  # x86_64 and aarch64 share the Landlock numbers
_NR_ADD_RULE: Final = 445
_CREATE_RULESET_VERSION: Final = 1
_RULE_PATH_BENEATH: Final = 1

FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
FS_REFER: Final = 1 << 13
FS_TRUNCATE: Final = 1 << 14
SCOPE_SIGNAL: Final = 1 << 1

#: Rights a rule on a non-directory may carry (device ioctls are not handled at all).
_FILE_RIGHTS: Final = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE
READ_EXEC: Final = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
#: Devices the command may write: discarding output is not writing a file anyone reads.
DEVICES: Final = ("/dev/null", "/dev/zero", "/dev/full")

#: The launcher: lock itself down, then become the command. ``-I -S``: no site, no user
#: paths, no PYTHON* variables (the command's environment is the operator's to shape). It
#: calls libc through ``_ctypes`` directly: importing the ``ctypes`` package costs more than
#: the rest of the launcher's start-up.
_LAUNCHER: Final = """\
import _ctypes, os, struct, sys
class L(_ctypes._SimpleCData):
    _type_ = "l"
class F(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = L
libc = _ctypes.dlopen(None, os.RTLD_NOW)
syscall, prctl = F(_ctypes.dlsym(libc, "syscall")), F(_ctypes.dlsym(libc, "prctl"))
class Rule(_ctypes.Array):
    _type_ = type("c_char", (_ctypes._SimpleCData,), {"_type_": "c"})
    _length_ = 12
fd = int(sys.argv[1])
own = os.open("/proc/self", os.O_PATH | os.O_CLOEXEC)  # this pid is the command's
rule = Rule.from_buffer_copy(struct.pack("<Qi", %(proc_rights)d, own))
if (
    syscall(L(445), L(fd), L(1), L(_ctypes.addressof(rule)), L(0)) != 0
    or prctl(L(38), L(1), L(0), L(0), L(0)) != 0
    or syscall(L(446), L(fd), L(0)) != 0
):
    e = _ctypes.get_errno()
    os.write(2, b"cordon: cannot lock the command down: " + os.strerror(e).encode() + b"\\n")
    os._exit(126)
os.close(fd)
os.close(own)
try:
    os.execv(sys.argv[2], sys.argv[2:])
except OSError as exc:
    os.write(2, b"cordon: cannot run " + sys.argv[2].encode() + b": " + exc.strerror.encode()
             + b"\\n")
    os._exit(127)
"""


class LandlockUnavailable(OSError):
    """This kernel cannot lock a command down (no Landlock, or it is disabled)."""


_libc: Any = None


def _syscall(nr: int, *args: int | bytes) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    keep: list[Any] = []  # the C buffers must outlive the call
    cargs: list[Any] = []
    for a in args:
        if isinstance(a, bytes):
            buf = ctypes.create_string_buffer(a, len(a))
            keep.append(buf)
            cargs.append(ctypes.c_long(ctypes.addressof(buf)))
        else:
            cargs.append(ctypes.c_long(a))
    ctypes.set_errno(0)
    rc = int(_libc.syscall(ctypes.c_long(nr), *cargs))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def abi_version() -> int:
    """The kernel's Landlock ABI, or :class:`LandlockUnavailable`."""
    if sys.platform != "linux":
        raise LandlockUnavailable(errno.ENOSYS, "Landlock is Linux only")
    try:
        return _syscall(_NR_CREATE_RULESET, 0, 0, _CREATE_RULESET_VERSION)
    except OSError as exc:
        raise LandlockUnavailable(exc.errno, f"Landlock unavailable: {exc.strerror}") from None


def _handled(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    return rights


def _add_rule(ruleset: int, path: str, rights: int, *, follow: bool = True) -> bool:
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False  # gone, or unreachable: a rule only grants, so no rule is less access
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            return False
        if not stat.S_ISDIR(mode):
            rights &= _FILE_RIGHTS
        if not rights:
            return False
        try:
            _syscall(_NR_ADD_RULE, ruleset, _RULE_PATH_BENEATH, struct.pack("<Qi", rights, fd), 0)
        except OSError:
            return False  # a filesystem Landlock will not tag: no rule is less access
        return True
    finally:
        os.close(fd)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _grant_all_but(ruleset: int, denied: list[str], rights: int) -> None:
    """Rules giving ``rights`` on everything under ``/`` except the ``denied`` trees."""
    # /proc is always walked into, so no other process's /proc/<pid> gets a rule.
    ancestors: set[str] = {"/", "/proc"}
    for d in denied:
        parent = os.path.dirname(d)
        while True:
            ancestors.add(parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    if "/" in denied:
        return
    stack = ["/"]
    while stack:
        here = stack.pop()
        try:
            names = os.listdir(here)
        except OSError:
            continue
        for name in names:
            p = os.path.join(here, name)
            if p in denied or (here == "/proc" and name.isdigit()):
                # No other process's /proc entry (its environ, its root, its fds): the
                # launcher grants the command its own before locking itself down.
                continue
            if p in ancestors:
                stack.append(p)
            else:
                _add_rule(ruleset, p, rights, follow=False)


def build_ruleset(
    *, abi: int, deny: Iterable[str], read_write: Iterable[str], devices: Iterable[str] = DEVICES
) -> int:
    """A Landlock ruleset fd (the caller closes it): read+execute everywhere but ``deny``
    (real paths), every right in ``read_write``, read+write on ``devices``. Signals cannot
    leave the domain (ABI 6)."""
    handled = _handled(abi)
    scoped = SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("<QQQ", handled, 0, scoped)
    ruleset = _syscall(_NR_CREATE_RULESET, attr, len(attr), 0)
    try:
        denied = sorted({os.path.normpath(d) for d in deny})
        _grant_all_but(ruleset, denied, READ_EXEC & handled)
        for path in read_write:
            _add_rule(ruleset, path, handled)
        for dev in devices:
            _add_rule(ruleset, dev, (FS_READ_FILE | FS_WRITE_FILE) & handled)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def launcher_argv(ruleset_fd: int, exe: str, args: list[str]) -> list[str]:
    """The argv that runs ``exe`` (with ``args`` after argv[0]) under the ruleset."""
    code = _LAUNCHER % {"proc_rights": FS_READ_FILE | FS_READ_DIR}
    return [sys.executable, "-I", "-S", "-c", code, str(ruleset_fd), exe, *args]
