"""What the seccomp filter refuses, by class, as x86_64 syscall numbers.

Numbers are from ``arch/x86/entry/syscalls/syscall_64.tbl``; the ones newer than most
distributions' headers (fchmodat2 452, statmount 457, listmount 458, setxattrat 463,
removexattrat 466, open_tree_attr 467, file_getattr 468, file_setattr 469) were checked on
Linux 6.18 by calling each with bad arguments: an unknown number answers ``ENOSYS``, a known
one ``EFAULT``/``EINVAL``/``EBADF``. A number this kernel does not have yet is harmless in a
deny list (the syscall does not exist), so newer entries cost nothing on older kernels.

Each class is denied for a reason the class shares; the README's sandbox table lists them.
Calls whose *arguments* decide (clone, prlimit64, the scheduling and signal calls, mmap's
protection, ioctl's command) are in :mod:`._seccomp`, not here.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DENIED", "DENIED_CLASSES"]

DENIED_CLASSES: Final[dict[str, dict[str, int]]] = {
    # No network: every socket family (socketpair stays: asyncio's self-pipe needs it).
    "network": {"socket": 41},
    # No programs, no processes (threads are clone with CLONE_THREAD, see _seccomp).
    "processes": {"execve": 59, "execveat": 322, "fork": 57, "vfork": 58},
    # No looking into or steering other processes. tkill takes a bare tid the filter cannot
    # tell from a stranger's; glibc signals threads with tgkill, which is checked instead.
    # capget names its pid inside a struct BPF cannot read, and answers ESRCH for a pid that
    # does not exist: an enumeration oracle (the worker's own capabilities are nothing).
    "other-processes": {
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "kcmp": 312,
        "pidfd_getfd": 438,
        "tkill": 200,
        "capget": 125,
    },
    # No mount or namespace games (the new mount API included), no listing of mounts.
    "mounts": {
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
        "open_tree_attr": 467,
        "statmount": 457,
        "listmount": 458,
        "open_by_handle_at": 304,
        "name_to_handle_at": 303,
        "quotactl": 179,
        "quotactl_fd": 443,
    },
    # File metadata. Landlock has no right for any of these and the worker keeps the host's
    # uid (no uid map in its user namespace), so it owns the host's files: the kernel would
    # let it chmod, chown, re-time or tag them. Denied everywhere, scratch included — BPF
    # cannot see which file a path or fd names (see _seccomp for why not a distinct uid).
    "metadata": {
        "chmod": 90,
        "fchmod": 91,
        "fchmodat": 268,
        "fchmodat2": 452,
        "chown": 92,
        "fchown": 93,
        "lchown": 94,
        "fchownat": 260,
        "utime": 132,
        "utimes": 235,
        "futimesat": 261,
        "utimensat": 280,
        "setxattr": 188,
        "lsetxattr": 189,
        "fsetxattr": 190,
        "setxattrat": 463,
        "removexattr": 197,
        "lremovexattr": 198,
        "fremovexattr": 199,
        "removexattrat": 466,
        "file_setattr": 469,  # the syscall form of the FS_IOC_FSSETXATTR ioctl (6.17)
    },
    # Watching the filesystem reveals names Landlock keeps the worker from listing (the
    # state dir's storage.db, audit.db, their WAL files), and fanotify can do more.
    "fs-watch": {
        "inotify_init": 253,
        "inotify_init1": 294,
        "inotify_add_watch": 254,
        "fanotify_init": 300,
        "fanotify_mark": 301,
    },
    # Large kernel attack surfaces a plugin has no use for.
    "kernel-surface": {
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
        "syslog": 103,
        "modify_ldt": 154,
        "uselib": 134,
        "lsm_set_self_attr": 460,
    },
    # Host-wide effects: flushing every filesystem (sync, syncfs on a host fd) stalls the
    # host's own fsyncs; the rest need capabilities the worker lacks but are refused anyway.
    "host-wide": {
        "sync": 162,
        "syncfs": 306,
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
    },
    # Limits are set once by the worker; the struct behind setrlimit cannot be read from
    # BPF, so every write is refused (prlimit64 reads stay, see _seccomp).
    "limits": {"setrlimit": 160},
    # No further filters (see _seccomp's docstring).
    "filters": {"seccomp": 317},
}

DENIED: Final[dict[str, int]] = {
    name: nr for table in DENIED_CLASSES.values() for name, nr in table.items()
}
