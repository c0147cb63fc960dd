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

What is refused outright, by class, is in :mod:`._syscalls`. What depends on arguments:

* **Only itself** (scheduling, priorities, signals, limits). The filter is built in the
  worker, which knows its pid: calls naming a pid accept 0 (the caller) or that pid,
  ``get/setpriority`` only ``PRIO_PROCESS`` and ``ioprio_*`` only ``IOPRIO_WHO_PROCESS``.
  A plugin thread has its own tid, which the filter (built before any plugin thread) cannot
  know: a thread acts on *itself* through 0 (what ``os.nice``, ``os.sched_setaffinity(0)``,
  OpenBLAS and glibc do) and on the whole worker through the pid; naming a sibling thread's
  tid is refused. A pid namespace would hide other pids too, but a process cannot enter one
  itself (``unshare(CLONE_NEWPID)`` only affects its children, and the worker has none); the
  host would have to start each worker through ``clone(CLONE_NEWPID)`` as a pid 1 that reaps
  and forwards signals, and without a private procfs (which needs a mount namespace) stat of
  ``/proc/<pid>`` would still show which pids exist. Argument filters it is; what remains
  visible is listed in the README.
* **W^X**: ``mmap``/``mprotect``/``pkey_mprotect`` with PROT_WRITE and PROT_EXEC together,
  and ``shmat`` with SHM_EXEC unless read-only, are refused. Hardening, not a boundary:
  ctypes is allowed, so a plugin runs native code anyway (RW then RX is still allowed, as
  JITs need); every guarantee holds against native code. numpy, OpenBLAS and ctypes
  callbacks work (libffi's closures use static trampolines, never RWX, on this platform).
* **ioctl**: an allow list of commands (see :data:`ALLOWED_IOCTLS`), ENOTTY for the rest.

Why seccomp and not a distinct uid for file metadata: a uid the worker does not share with
the host's files would make the kernel's own owner checks refuse chmod/chown/utime/xattrs,
scratch aside. But only a root host can hand one out (an unprivileged host cannot setuid and
the worker's user namespace cannot map another host uid), it needs a uid per plugin (a
shared one lets plugins signal and trace each other) and a host that chowns each scratch
dir. Seccomp holds the same line for every host, root or not, and costs nothing. Its price:
BPF sees only numbers, not which file a path or fd names, so the metadata family is refused
in scratch as well. Files are created with the mode ``open``/``mkdir`` asks for under the
umask, which stays settable, and :mod:`._compat` keeps ``shutil``'s copies working (contents
copied, modes and times skipped).
"""

from __future__ import annotations

import errno
import struct
from typing import Final

from . import _bpf
from ._bpf import ARCH, NR, Label, ja, jeq, jge, jset, ld, ret
from ._native import NR as SYS
from ._native import native
from ._syscalls import DENIED

__all__ = ["ALLOWED_IOCTLS", "DENIED", "build", "freeze", "install", "program"]

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

CLONE: Final = 56
CLONE3: Final = 435
PRLIMIT64: Final = 302
PRCTL: Final = 157

#: Hot syscalls allowed before the deny list is walked (every read/write/futex/poll of the
#: worker would otherwise pay ~150 comparisons). None of them is in any list below.
FAST_ALLOW: Final = (0, 1, 202, 7, 232, 281, 271, 270, 23, 3)

# -- scheduling and signals: only the worker itself ------------------------------------------
#: ``(which, who)`` calls: only ``which == PRIO_PROCESS`` and ``who`` = 0 or the worker's pid
#: (``PRIO_PGRP``/``PRIO_USER`` reach other processes: ``PRIO_USER, 0`` renices every process
#: of the uid, and getpriority over pids enumerates them).
PRIORITY: Final = {"getpriority": 140, "setpriority": 141}
PRIO_PROCESS: Final = 0
IOPRIO: Final = {"ioprio_set": 251, "ioprio_get": 252}
IOPRIO_WHO_PROCESS: Final = 1
#: Calls whose first argument is a pid: only 0 (the caller) or the worker's own pid.
OWN_PID_OR_ZERO: Final = {
    "sched_setparam": 142,
    "sched_getparam": 143,
    "sched_setscheduler": 144,
    "sched_getscheduler": 145,
    "sched_rr_get_interval": 148,
    "sched_setaffinity": 203,
    "sched_setattr": 314,
    "sched_getattr": 315,
    "migrate_pages": 256,
    "move_pages": 279,
    "get_robust_list": 274,
    "getpgid": 121,
    "getsid": 124,
}
#: ``sched_getaffinity`` of any other pid answers ENOSYS, not EPERM: glibc's
#: ``pthread_getattr_np`` asks it about the calling *thread's* tid (which the filter cannot
#: know) and treats only ENOSYS as "no affinity information", so a thread's own attribute
#: query keeps working (Rust's std and JVMs make it) while no other pid is revealed.
SCHED_GETAFFINITY: Final = 204

#: Signal calls whose first argument is a thread group: only the worker's own (kill(0) and
#: kill(-pgrp) address a process group, kill(-1) everyone: all refused). Landlock's signal
#: scope (ABI 6) already stops delivery outside the worker; this also stops the ESRCH/EPERM
#: difference from enumerating which pids exist.
OWN_PID: Final = {
    "kill": 62,
    "tgkill": 234,
    "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297,
    "pidfd_open": 434,
}

#: ``prctl(PR_SCHED_CORE, op, pid, ...)`` shares core-scheduling cookies with another pid.
PR_SCHED_CORE: Final = 62
FCNTL: Final = 72
#: fcntl commands refused: a lease on a readable host file stalls the host's next writer
#: open for lease-break-time (45 s by default); dnotify is inotify by another name.
DENIED_FCNTL: Final = {"F_SETLEASE": 1024, "F_NOTIFY": 1026}

# -- W^X --------------------------------------------------------------------------------------
#: ``prot`` is the third argument of each; a mapping may be writable or executable, not both.
PROT_CALLS: Final = {"mmap": 9, "mprotect": 10, "pkey_mprotect": 329}
PROT_WRITE: Final = 0x2
PROT_EXEC: Final = 0x4
SHMAT: Final = 30
SHM_RDONLY: Final = 0o10000
SHM_EXEC: Final = 0o100000

# -- ioctl: an allow list of commands ----------------------------------------------------------
IOCTL: Final = 16
#: ioctl reaches every driver and filesystem: chattr (FS_IOC_SETFLAGS), project ids
#: (FS_IOC_FSSETXATTR), fs-verity (makes a file permanently read-only), btrfs snapshots,
#: TIOCSTI (types into a terminal) ... work on a file opened *read-only*, and Landlock's
#: IOCTL_DEV right covers device files only. So only these commands pass; every other
#: answers ENOTTY, the errno code already expects for "this fd does not do that".
ALLOWED_IOCTLS: Final = {
    "TCGETS": 0x5401,  # isatty(), which io.open calls on every file
    "TIOCGWINSZ": 0x5413,  # os.get_terminal_size
    "TIOCGPGRP": 0x540F,
    "FIONREAD": 0x541B,
    "FIONBIO": 0x5421,
    "FIONCLEX": 0x5450,
    "FIOCLEX": 0x5451,
    "FIOASYNC": 0x5452,
    "FIGETBSZ": 0x2,
    "FS_IOC_GETFLAGS": 0x80086601,
    "FS_IOC32_GETFLAGS": 0x80046601,
    "FS_IOC_FSGETXATTR": 0x801C581F,
    "FICLONE": 0x40049409,  # the destination fd must be open for writing: Landlock's call
    "FICLONERANGE": 0x4020940D,
}


#: Syscall numbers a leaf of :func:`_search`'s tree compares one by one.
SEARCH_LEAF: Final = 8
#: What a leaf returns itself; any other label is a check of the arguments, jumped to.
_LEAF_RETURNS: Final = {
    "allow": RET_ALLOW,
    "eperm": RET_ERRNO | errno.EPERM,
    "enosys": RET_ERRNO | errno.ENOSYS,
}


def _search(route: list[tuple[int, str]], name: str) -> list[_bpf.Insn | Label]:
    """A binary search over the sorted ``(nr, label)`` pairs, falling through to ALLOW.

    Why a tree and not one comparison per listed number in a row: the kernel, when it
    installs a filter, runs it for every syscall number to find those it always allows
    (``seccomp_cache_prepare``, so those skip the filter from then on), and a row makes each
    of those ~460 runs walk the whole row. That was ~0.2 ms of every worker's start; a tree
    walks ~10 instructions per number (and so does every call that reaches the filter).
    Every node's labels start with ``name``, its path in the tree: unique."""
    if len(route) <= SEARCH_LEAF:
        out: list[_bpf.Insn | Label] = [jeq(nr, jt=f"{name}:{label}") for nr, label in route]
        out.append(ret(RET_ALLOW))
        for label in dict.fromkeys(label for _, label in route):
            local = _LEAF_RETURNS.get(label)
            out += [Label(f"{name}:{label}"), ret(local) if local is not None else ja(label)]
        return out
    mid = len(route) // 2
    upper = _search(route[mid:], name + "+")
    lower = _search(route[:mid], name + "-")
    # nr >= the middle one's: the upper half, right below; else the lower half, after it.
    # A conditional jump reaches 255 instructions: past that, it hops over a ``ja``.
    if sum(not isinstance(i, Label) for i in upper) <= _bpf.MAX_JUMP:
        head: list[_bpf.Insn | Label] = [jge(route[mid][0], jf=f"{name}<")]
    else:
        head = [jge(route[mid][0], jt=f"{name}>"), ja(f"{name}<"), Label(f"{name}>")]
    return [*head, *upper, Label(f"{name}<"), *lower]


def build(pid: int) -> list[tuple[int, int, int, int]]:
    """The filter for a worker whose pid is ``pid``, assembled. Pure: the tests evaluate it
    without installing it."""
    eperm = RET_ERRNO | errno.EPERM
    prog: list[_bpf.Insn | Label] = [
        # 1. Architecture: anything but native x86_64 (i386 via int 0x80, ...) dies.
        ld(ARCH),
        jeq(AUDIT_ARCH_X86_64, jt="native"),
        ret(RET_KILL_PROCESS),
        Label("native"),
        # 2. x32 shares AUDIT_ARCH_X86_64 and flags itself by a bit in nr: it dies too.
        ld(NR),
        jset(X32_SYSCALL_BIT, jf="x86_64"),
        ret(RET_KILL_PROCESS),
        Label("x86_64"),
    ]
    dispatch: list[tuple[str, dict[str, int]]] = [
        ("priority", PRIORITY),
        ("ioprio", IOPRIO),
        ("own_or_zero", OWN_PID_OR_ZERO),
        ("own", OWN_PID),
        ("getaffinity", {"sched_getaffinity": SCHED_GETAFFINITY}),
        ("prot", PROT_CALLS),
        ("shmat", {"shmat": SHMAT}),
        ("ioctl", {"ioctl": IOCTL}),
        ("clone", {"clone": CLONE}),
        ("prlimit64", {"prlimit64": PRLIMIT64}),
        ("prctl", {"prctl": PRCTL}),
        ("fcntl", {"fcntl": FCNTL}),
    ]
    # 3. Where each listed number goes (the first table naming it wins); unlisted: allowed.
    route: dict[int, str] = dict.fromkeys(FAST_ALLOW, "allow")
    for nr in DENIED.values():
        route.setdefault(nr, "eperm")
    for label, table in dispatch:
        for nr in table.values():
            route.setdefault(nr, label)
    route.setdefault(CLONE3, "enosys")
    prog += _search(sorted(route.items()), "nr")
    prog += [
        # 4. Arguments are C ints (pid_t, which, option, ioctl's cmd) unless noted: the kernel
        # reads only their low 32 bits, so that word is all of them.
        Label("priority"),
        ld(_bpf.ARG_LO(0)),
        jeq(PRIO_PROCESS, jt="who_arg1", jf="eperm"),
        Label("ioprio"),
        ld(_bpf.ARG_LO(0)),
        jeq(IOPRIO_WHO_PROCESS, jf="eperm"),
        Label("who_arg1"),
        ld(_bpf.ARG_LO(1)),
        jeq(0, jt="allow"),
        jeq(pid, jt="allow", jf="eperm"),
        # prlimit64(pid, resource, new, old): reading (new == NULL) one's own limits only.
        Label("prlimit64"),
        ld(_bpf.ARG_LO(2)),
        jeq(0, jf="eperm"),
        ld(_bpf.ARG_HI(2)),
        jeq(0, jt="own_or_zero", jf="eperm"),
        Label("own_or_zero"),
        ld(_bpf.ARG_LO(0)),
        jeq(0, jt="allow"),
        jeq(pid, jt="allow", jf="eperm"),
        Label("getaffinity"),
        ld(_bpf.ARG_LO(0)),
        jeq(0, jt="allow"),
        jeq(pid, jt="allow", jf="enosys"),
        Label("own"),
        ld(_bpf.ARG_LO(0)),
        jeq(pid, jt="allow", jf="eperm"),
        # prot: W^X. Unknown high bits are EINVAL or ignored by the kernel, never W or X.
        Label("prot"),
        ld(_bpf.ARG_LO(2)),
        jset(PROT_WRITE, jf="allow"),
        jset(PROT_EXEC, jt="eperm", jf="allow"),
        Label("shmat"),
        ld(_bpf.ARG_LO(2)),
        jset(SHM_EXEC, jf="allow"),
        jset(SHM_RDONLY, jt="allow", jf="eperm"),
        Label("ioctl"),
        ld(_bpf.ARG_LO(1)),
        *[jeq(cmd, jt="allow") for cmd in sorted(ALLOWED_IOCTLS.values())],
        ret(RET_ERRNO | errno.ENOTTY),
        # clone(flags, ...): only a thread, and a thread with no new namespace.
        Label("clone"),
        ld(_bpf.ARG_LO(0)),  # the kernel reads only the low 32 bits of clone's flags
        jset(CLONE_NEW_ANY, jt="eperm"),
        jset(CLONE_THREAD, jt="allow", jf="eperm"),
        # prctl(option, ...): option is an int in the kernel, so the low word is all of it.
        Label("prctl"),
        ld(_bpf.ARG_LO(0)),
        jeq(PR_SET_SECCOMP, jt="eperm"),
        jeq(PR_SCHED_CORE, jt="eperm", jf="allow"),
        Label("fcntl"),
        ld(_bpf.ARG_LO(1)),
        *[jeq(cmd, jt="eperm") for cmd in sorted(DENIED_FCNTL.values())],
        ret(RET_ALLOW),
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


#: Two pids the template is built for (any two distinct values work: see :func:`freeze`).
_PROBE_PIDS: Final = (0x1357_9BDF, 0x2468_ACE0)
#: ``(bytes of build(probe), indices of the instructions holding the pid)``, made once by the
#: zygote before any fork (:func:`freeze`); ``None`` in a spawned worker.
_template: tuple[bytes, tuple[int, ...]] | None = None


def freeze() -> None:
    """Assemble the filter once, in the zygote (``cordon.worker._zygote``), so a forked worker
    only writes its own pid into a copy: assembling is ~0.5 ms of Python per worker, the
    patch a few microseconds. The program's shape does not depend on the pid (it is only the
    constant of some comparisons), so the instructions where two builds for different pids
    differ are exactly where the pid goes; anything else differing is refused here."""
    global _template
    first, second = (build(pid) for pid in _PROBE_PIDS)
    slots: list[int] = []
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if a == b:
            continue
        if a[:3] != b[:3] or (a[3], b[3]) != _PROBE_PIDS:
            raise ValueError(f"seccomp program: instruction {i} depends on the pid otherwise")
        slots.append(i)
    _template = (_bpf.to_bytes(first), tuple(slots))


def program(pid: int) -> bytes:
    """``struct sock_filter[]`` for the worker ``pid``: :func:`build`'s, byte for byte (from
    the zygote's template where :func:`freeze` ran)."""
    if _template is None:
        return _bpf.to_bytes(build(pid))
    code, slots = _template
    out = bytearray(code)
    for i in slots:
        # struct sock_filter {__u16 code; __u8 jt; __u8 jf; __u32 k;}: k at byte 4.
        struct.pack_into("<I", out, i * 8 + 4, pid)
    return bytes(out)


def install(pid: int) -> None:
    """Install the filter for the worker ``pid`` on every thread (TSYNC); needs no_new_privs
    set first.

    Raises ``OSError`` when the kernel refuses (no CONFIG_SECCOMP_FILTER, EINVAL) or when
    another thread could not be synchronised (the syscall then returns that thread's id).
    """
    nat = native()
    code = program(pid)
    # struct sock_fprog { unsigned short len; /* pad */ struct sock_filter *filter; }
    fprog = struct.pack("<H6xQ", len(code) // 8, nat.address(code))
    rc = nat.syscall(
        SYS.SECCOMP,
        SECCOMP_SET_MODE_FILTER,
        SECCOMP_FILTER_FLAG_TSYNC,
        fprog,
        name="seccomp(SET_MODE_FILTER)",
    )
    del code  # referenced up to here: the kernel read the filter from its bytes
    if rc != 0:
        raise OSError(errno.EBUSY, f"seccomp TSYNC failed: thread {rc} could not be synchronised")
