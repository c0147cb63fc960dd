"""Landlock through its three raw syscalls (uapi: ``include/uapi/linux/landlock.h``).

Written here rather than taken from PyPI: the ``landlock`` package only knows filesystem
rights, and the whole thing is three syscalls and two packed structs.

Semantics relied on (Documentation/userspace-api/landlock.rst):

* A ruleset *handles* a set of rights; anything handled and not granted by a rule beneath
  an allowed path is denied (``EACCES``; ``EXDEV`` for a link/rename that would let a file
  gain rights). We handle every right the running ABI knows, so nothing is left implicitly
  allowed, and grant only READ_FILE/READ_DIR on the read roots: no EXECUTE anywhere (mapping
  an extension module ``PROT_EXEC`` is an mmap, not an execution, and needs only READ_FILE).
* Rules are attached to inodes opened with ``O_PATH``; symlinks are followed at rule time,
  so a rule on a link grants its target, and access through a symlink is judged on the path
  it resolves to.
* Rights on a non-directory are limited to file rights: adding directory rights to a file
  rule is ``EINVAL``, so those are masked off per rule.
* ``landlock_restrict_self`` applies to the calling thread only and is inherited by threads
  created afterwards: it must run while the worker has a single thread.
* ABI 4 adds TCP bind/connect rights (handled, no port granted: every TCP bind/connect is
  ``EACCES``); ABI 6 adds scopes: signals and abstract unix sockets cannot leave the domain.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterable
from typing import Final

from ._native import NR, SyscallError, native

__all__ = ["abi_version", "restrict"]

CREATE_RULESET_VERSION: Final = 1 << 0
RULE_PATH_BENEATH: Final = 1

FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
FS_REMOVE_DIR: Final = 1 << 4
FS_REMOVE_FILE: Final = 1 << 5
FS_MAKE_CHAR: Final = 1 << 6
FS_MAKE_DIR: Final = 1 << 7
FS_MAKE_REG: Final = 1 << 8
FS_MAKE_SOCK: Final = 1 << 9
FS_MAKE_FIFO: Final = 1 << 10
FS_MAKE_BLOCK: Final = 1 << 11
FS_MAKE_SYM: Final = 1 << 12
FS_REFER: Final = 1 << 13  # ABI 2
FS_TRUNCATE: Final = 1 << 14  # ABI 3
FS_IOCTL_DEV: Final = 1 << 15  # ABI 5

NET_BIND_TCP: Final = 1 << 0  # ABI 4
NET_CONNECT_TCP: Final = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1

#: Rights a rule on a non-directory may carry.
FILE_RIGHTS: Final = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

READ: Final = FS_READ_FILE | FS_READ_DIR
#: Scratch and fs_write: everything a program does with its own files. Not EXECUTE, not
#: device nodes, not sockets (socket() is denied anyway), not device ioctls.
READ_WRITE: Final = (
    READ
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_FIFO
    | FS_MAKE_SYM
    | FS_REFER
    | FS_TRUNCATE
)
#: /dev/null and friends: read and write, nothing else.
DEVICE: Final = FS_READ_FILE | FS_WRITE_FILE


def fs_rights(abi: int) -> int:
    rights = (FS_MAKE_SYM << 1) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def abi_version() -> int:
    """The kernel's Landlock ABI; ``OSError`` if unsupported (ENOSYS) or disabled (EOPNOTSUPP)."""
    return native().syscall(
        NR.LANDLOCK_CREATE_RULESET, 0, 0, CREATE_RULESET_VERSION, name="landlock_create_ruleset"
    )


def restrict(
    *,
    abi: int,
    read: Iterable[str],
    read_write: Iterable[str],
    devices: Iterable[str],
    net: bool = True,
    scope: bool = True,
) -> list[str]:
    """Build and enforce the ruleset on the calling thread; return the paths granted.

    Paths that do not exist are skipped: a rule can only grant, so a missing path means less
    access, never more. Any other failure raises ``OSError`` before anything is enforced.
    """
    nat = native()
    handled_fs = fs_rights(abi)
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if net and abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if scope and abi >= 6 else 0
    # struct landlock_ruleset_attr { __u64 handled_access_fs, handled_access_net, scoped; }
    # The kernel copies the size we pass and requires unknown trailing fields to be zero, so
    # the full struct is fine on older ABIs as long as we leave the newer fields at 0.
    attr = struct.pack("<QQQ", handled_fs, handled_net, scoped)
    ruleset = nat.syscall(NR.LANDLOCK_CREATE_RULESET, attr, len(attr), 0, name="create_ruleset")
    granted: list[str] = []
    try:
        for paths, rights in ((read, READ), (read_write, READ_WRITE), (devices, DEVICE)):
            for path in paths:
                if _add_path_rule(ruleset, path, rights & handled_fs):
                    granted.append(path)
        nat.syscall(NR.LANDLOCK_RESTRICT_SELF, ruleset, 0, name="landlock_restrict_self")
    finally:
        os.close(ruleset)
    return granted


def _add_path_rule(ruleset: int, path: str, rights: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return False
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        if not rights:
            return False
        # struct landlock_path_beneath_attr { __u64 allowed_access; __s32 parent_fd; } packed
        attr = struct.pack("<Qi", rights, fd)
        try:
            native().syscall(
                NR.LANDLOCK_ADD_RULE, ruleset, RULE_PATH_BENEATH, attr, 0, name="add_rule"
            )
        except SyscallError as exc:
            raise SyscallError(
                exc.errno or errno.EINVAL, f"landlock rule for {path}: {exc}"
            ) from None
        return True
    finally:
        os.close(fd)
