"""The worker's seccomp-bpf filter: what it denies, and how it is installed.

A *deny list* over a default of ALLOW, deliberately: CPython, its extension modules and glibc
use a wide syscall set that changes with library versions, and an allow list that misses one
turns into random ``EPERM``s inside third-party code. The deny list targets what a sandboxed
plugin must never do — start programs or processes, open sockets, debug or read other
processes, change mounts/namespaces/limits, load kernel code, or reach large kernel attack
surfaces (bpf, io_uring, perf, userfaultfd, keyrings). The classic holes of deny lists are
closed first: a foreign architecture (the 32-bit ``int 0x80`` path arrives as
``AUDIT_ARCH_I386``) and the x32 ABI (same arch, syscall nr | ``0x40000000``) both kill the
process, so no syscall reaches the table under a number the table does not know.

Denials return ``EPERM``, the errno a program expects for "not allowed" and handles without
retry loops. ``clone3`` returns ``ENOSYS`` instead: its flags live in a struct in memory,
which BPF cannot read, and glibc (2.34+) answers ``ENOSYS`` by falling back to ``clone``,
whose flags are a register we *can* inspect — so threads keep working and processes don't.

Stacking: a plugin installing its own filter could never loosen this one, because the kernel
runs every filter and keeps the most restrictive action (``min()`` over the action values,
see ``include/uapi/linux/seccomp.h``): our ``ERRNO`` beats any later ``ALLOW``. We still deny
``seccomp()`` and ``prctl(PR_SET_SECCOMP)``: a stacked filter is extra kernel-verified code
run on every syscall (attack surface and a cheap way to slow the worker down), and a
``SECCOMP_RET_USER_NOTIF`` listener would hand a plugin a supervisor-style fd.
"""

from __future__ import annotations

import errno
import struct
from typing import Final

from . import _bpf
from ._bpf import ARCH, NR, Label, jeq, jset, ld, ret
from ._native import NR as SYS
from ._native import native

__all__ = ["DENIED", "build", "install"]

AUDIT_ARCH_X86_64: Final = 0xC000003E
X32_SYSCALL_BIT: Final = 0x40000000

RET_KILL_PROCESS: Final = 0x80000000
RET_ERRNO: Final = 0x00050000
RET_ALLOW: Final = 0x7FFF0000

SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_FILTER_FLAG_TSYNC: Final = 1
PR_SET_SECCOMP: Final = 22

CLONE_THREAD: Final = 0x00010000
#: Namespace flags a thread-creating clone must not carry either (CLONE_NEWTIME, 0x80, is
#: clone3/unshare-only: in clone()'s first argument the low byte is the exit signal).
CLONE_NEW_ANY: Final = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

#: x86_64 numbers of syscalls denied outright with EPERM.
DENIED: Final[dict[str, int]] = {
    # no network: every socket family (socketpair stays: asyncio's self-pipe needs it)
    "socket": 41,
    # no programs, no processes (threads are clone with CLONE_THREAD, handled below)
    "execve": 59,
    "execveat": 322,
    "fork": 57,
    "vfork": 58,
    # no looking into or steering other processes
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "pidfd_getfd": 438,
    # no mount or namespace games (new mount API included)
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "unshare": 272,
    "setns": 308,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    # large kernel attack surfaces a plugin has no use for
    "bpf": 321,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "personality": 135,
    # loading kernel code, rebooting, hardware access
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "swapon": 167,
    "swapoff": 168,
    "acct": 163,
    # limits are set once by the worker; the struct behind setrlimit cannot be read from
    # BPF, so every write is refused (prlimit64 below still allows reads)
    "setrlimit": 160,
    # no further filters (see the module docstring)
    "seccomp": 317,
}

CLONE: Final = 56
CLONE3: Final = 435
PRLIMIT64: Final = 302
PRCTL: Final = 157


def build() -> list[tuple[int, int, int, int]]:
    """The filter, assembled. Pure: the tests evaluate it without installing it."""
    eperm = RET_ERRNO | errno.EPERM
    prog: list[_bpf.Insn | Label] = [
        # 1. Architecture: anything but native x86_64 (i386 via int 0x80, ...) dies.
        ld(ARCH),
        jeq(AUDIT_ARCH_X86_64, jf="kill"),
        # 2. x32 shares AUDIT_ARCH_X86_64 and flags itself by a bit in nr: it dies too.
        ld(NR),
        jset(X32_SYSCALL_BIT, jt="kill"),
    ]
    for nr in sorted(set(DENIED.values())):
        prog.append(jeq(nr, jt="eperm"))
    prog += [
        jeq(CLONE3, jt="enosys"),
        jeq(CLONE, jt="clone"),
        jeq(PRLIMIT64, jt="prlimit64"),
        jeq(PRCTL, jt="prctl"),
        ret(RET_ALLOW),
        # clone(flags, ...): only a thread, and a thread with no new namespace.
        Label("clone"),
        ld(_bpf.ARG_LO(0)),  # the kernel reads only the low 32 bits of clone's flags
        jset(CLONE_NEW_ANY, jt="eperm"),
        jset(CLONE_THREAD, jt="allow", jf="eperm"),
        # prlimit64(pid, resource, new, old): reading (new == NULL) is fine, writing is not.
        Label("prlimit64"),
        ld(_bpf.ARG_LO(2)),
        jeq(0, jf="eperm"),
        ld(_bpf.ARG_HI(2)),
        jeq(0, jt="allow", jf="eperm"),
        # prctl(option, ...): option is an int in the kernel, so the low word is all of it.
        Label("prctl"),
        ld(_bpf.ARG_LO(0)),
        jeq(PR_SET_SECCOMP, jt="eperm", jf="allow"),
        Label("allow"),
        ret(RET_ALLOW),
        Label("eperm"),
        ret(eperm),
        Label("enosys"),
        ret(RET_ERRNO | errno.ENOSYS),
        Label("kill"),
        ret(RET_KILL_PROCESS),
    ]
    return _bpf.assemble(prog)


def install() -> None:
    """Install the filter on every thread (TSYNC); needs no_new_privs set first.

    Raises ``OSError`` when the kernel refuses (no CONFIG_SECCOMP_FILTER, EINVAL) or when
    another thread could not be synchronised (the syscall then returns that thread's id).
    """
    nat = native()
    code = _bpf.to_bytes(build())
    buf, addr = nat.buffer(code)
    # struct sock_fprog { unsigned short len; /* pad */ struct sock_filter *filter; }
    fprog = struct.pack("<H6xQ", len(code) // 8, addr)
    rc = nat.syscall(
        SYS.SECCOMP,
        SECCOMP_SET_MODE_FILTER,
        SECCOMP_FILTER_FLAG_TSYNC,
        fprog,
        name="seccomp(SET_MODE_FILTER)",
    )
    del buf
    if rc != 0:
        raise OSError(errno.EBUSY, f"seccomp TSYNC failed: thread {rc} could not be synchronised")
