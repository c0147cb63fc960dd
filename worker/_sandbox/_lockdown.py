"""The lock-down sequence: which layers, in which order, and what gets reported.

Order matters and is fixed:

1. ``fds``          close every inherited fd not explicitly kept (nothing leaks in).
2. ``rlimits``      kernel resource limits (idempotent; the launch sequence sets them first).
3. ``netns``        new user+net+IPC namespaces: no network, capabilities dropped (``userns``),
                    private SysV IPC and POSIX message queues (``ipcns``).
4. ``no-new-privs`` required by Landlock and seccomp for a non-root caller, and after the
                    user namespace the worker is non-root as far as the host is concerned.
5. ``landlock-*``   filesystem, TCP and IPC scoping; per thread, so before any thread exists.
6. ``seccomp``      last of the kernel layers, because it denies ``unshare`` and ``seccomp``
                    which the steps above use; TSYNC covers any thread anyway. Built for this
                    worker's pid (scheduling and signal calls may name only the worker).
7. ``audit-hook``   Python-level defence in depth only: no guarantee rests on it.

A layer the kernel or container cannot provide is reported as ``"unavailable: <why>"``, never
skipped silently; ``strict`` turns any such report into :class:`SandboxUnavailable`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Collection, Iterator
from typing import Final

from cordon.protocol import Limits, SandboxPolicy, SandboxUnavailable

from . import _audit, _compat, _landlock, _limits, _namespaces, _native, _seccomp

__all__ = ["LAYERS", "all_read_roots", "freeze", "lock_down", "outermost", "read_roots"]

LAYERS: Final = (
    "fds",
    "rlimits",
    "netns",
    "userns",
    "ipcns",
    "no-new-privs",
    "landlock-fs",
    "landlock-net",
    "landlock-scope",
    "seccomp",
    "audit-hook",
)

#: Where the dynamic loader and extension modules find shared libraries (whichever exist).
LIBRARY_DIRS: Final = (
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/local/lib",
)
#: Small read-only system files libc consults: the loader cache (else dlopen falls back to
#: default dirs), the time zone (else UTC), CPU topology (os.cpu_count, executor sizes).
SYSTEM_READ: Final = (
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    "/sys/devices/system/cpu",
)
DEVICES: Final = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

PR_SET_NO_NEW_PRIVS: Final = 38


def _symlinks_below(root: str, depth: int) -> Iterator[str]:
    """Targets of symlinks directly inside ``root`` (and inside namespace-package dirs one
    level further): how an editable install points site-packages at a source tree."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_symlink():
                yield os.path.realpath(entry.path)
            elif (
                depth > 0
                and entry.is_dir()
                and not os.path.exists(os.path.join(entry.path, "__init__.py"))
            ):
                yield from _symlinks_below(entry.path, depth - 1)
        except OSError:
            continue


#: :func:`read_roots` as the zygote computed it (:func:`freeze_read_roots`), for its forks.
_frozen_roots: tuple[str, ...] | None = None


def freeze_read_roots() -> None:
    """Compute :func:`read_roots` once, in the zygote (``cordon.worker._zygote``), before any
    fork: every forked worker locks down with the template's ``sys.path`` and loaded packages
    (its plugin's paths are added after the lock-down), so the answer is the same in each, and
    walking them is ~4 ms of a fork's start. Nothing of a plugin has run when it is computed."""
    global _frozen_roots
    _frozen_roots = tuple(read_roots())


def freeze() -> None:
    """In the zygote, before any fork: what every forked worker's lock-down would compute
    alike (the read roots, the assembled seccomp program, the ctypes helper), computed once.
    All are plugin-independent; nothing kernel-side (a Landlock ruleset, a filter) is made
    here: each worker builds and enforces its own."""
    freeze_read_roots()
    _seccomp.freeze()
    _native.freeze()


def read_roots() -> list[str]:
    """Everything the interpreter needs to keep importing: the installation, every existing
    ``sys.path`` entry (and what links inside them point at), loaded packages' real dirs;
    only the outermost of them (:func:`outermost`)."""
    if _frozen_roots is not None:
        return list(_frozen_roots)
    return outermost(all_read_roots())


def all_read_roots() -> list[str]:
    """:func:`read_roots` before pruning: every path the interpreter reads from."""
    roots: list[str] = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        roots += [p, os.path.realpath(p)]
    for entry in sys.path:
        if not entry or not os.path.exists(entry):
            continue
        roots += [entry, os.path.realpath(entry)]
        if os.path.isdir(entry):
            roots += _symlinks_below(entry, 1)
    for mod in list(sys.modules.values()):
        for p in getattr(mod, "__path__", None) or ():
            if isinstance(p, str) and os.path.isdir(p):
                roots.append(os.path.realpath(p))
    roots += [d for d in LIBRARY_DIRS if os.path.isdir(d)]
    roots += SYSTEM_READ
    return _unique(roots)


def _unique(paths: list[str]) -> list[str]:
    return list(dict.fromkeys(p for p in paths if p))


def outermost(paths: list[str]) -> list[str]:
    """``paths`` less each one another of them already grants: a Landlock rule allows its
    rights on everything beneath its directory (judged on the real path, since a rule follows
    symlinks when it is added), so a path whose real path is inside another's real directory,
    or equal to an earlier one's, adds nothing but syscalls (the interpreter's own roots
    nest: the prefix, its ``lib/python3.x``, every loaded package's dir under it). All are
    granted the same rights; dropping a rule never grants anything."""
    real = [os.path.realpath(p) for p in paths]
    dirs = {r.rstrip("/") + "/" for r in real if os.path.isdir(r)}
    kept: list[str] = []
    seen: set[str] = set()
    for path, r in zip(paths, real, strict=True):
        if r in seen:
            continue
        seen.add(r)
        # Every proper ancestor of r, as "dir/": is one of them granted?
        parts = r.rstrip("/").split("/")
        if any("/".join(parts[:i]) + "/" in dirs for i in range(1, len(parts))):
            continue
        kept.append(path)
    return kept


def close_fds(keep: Collection[int]) -> None:
    """Close every fd except ``keep`` (close_range(2) under ``os.closerange``)."""
    lo = 0
    for fd in sorted(set(keep)):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 0x7FFFFFFF)


def _no_new_privs() -> None:
    _native.native().syscall(
        _native.NR.PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, name="prctl(NO_NEW_PRIVS)"
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"unavailable: {exc.strerror}"
    return f"unavailable: {type(exc).__name__}: {exc}"


def lock_down(
    *,
    plugin_id: str,
    policy: SandboxPolicy,
    limits: Limits,
    plugin_dir: str,
    scratch_dir: str,
    read_paths: list[str],
    keep_fds: list[int],
    only: Collection[str] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, str]:
    """See :func:`cordon.worker._sandbox.lock_down`.

    ``only`` (tests and the benchmark) applies just the named layers and reports the rest as
    ``"off"``; ``timings`` receives each step's wall time in seconds.
    """
    report: dict[str, str] = {}
    clock = time.perf_counter

    def wanted(*layers: str) -> bool:
        if policy.mode == "off" or (only is not None and not set(layers) & set(only)):
            for layer in layers:
                report[layer] = "off"
            return False
        return True

    def timed(step: str, t0: float) -> None:
        if timings is not None:
            timings[step] = clock() - t0

    try:
        t0 = clock()
        if wanted("fds"):
            try:
                close_fds(keep_fds)
                report["fds"] = "applied"
            except OSError as exc:
                report["fds"] = _why(exc)
        timed("fds", t0)

        # rlimits are applied even with mode "off": they are resource limits, not isolation.
        t0 = clock()
        if only is None or "rlimits" in only:
            report.update(_limits.apply_limits(limits))
        else:
            report["rlimits"] = "off"
        timed("rlimits", t0)

        t0 = clock()
        if wanted("netns", "userns", "ipcns"):
            report.update(_namespaces.unshare_network())
        timed("netns", t0)

        t0 = clock()
        nnp = wanted("no-new-privs", "landlock-fs", "landlock-net", "landlock-scope", "seccomp")
        if nnp:
            try:
                _no_new_privs()
                report["no-new-privs"] = "applied"
            except OSError as exc:
                report["no-new-privs"] = _why(exc)
        timed("no-new-privs", t0)

        t0 = clock()
        if wanted("landlock-fs", "landlock-net", "landlock-scope"):
            report.update(
                _apply_landlock(
                    policy=policy,
                    plugin_dir=plugin_dir,
                    scratch_dir=scratch_dir,
                    read_paths=read_paths,
                )
            )
        timed("landlock", t0)

        t0 = clock()
        if wanted("seccomp"):
            try:
                _seccomp.install(os.getpid())
                report["seccomp"] = "applied"
                _compat.install()
            except OSError as exc:
                report["seccomp"] = _why(exc)
        timed("seccomp", t0)
    finally:
        # Whatever happens above: nothing of the lock-down's native helper outlives it.
        _native.release()

    t0 = clock()
    if wanted("audit-hook"):
        _audit.install()
        report["audit-hook"] = "applied"
    timed("audit-hook", t0)

    if policy.mode == "strict":
        missing = [f"{k}: {v[len('unavailable: ') :]}" for k, v in report.items() if _bad(v)]
        if missing:
            raise SandboxUnavailable(plugin=plugin_id, missing=missing)
    return report


def _bad(status: str) -> bool:
    return status.startswith("unavailable")


def _apply_landlock(
    *, policy: SandboxPolicy, plugin_dir: str, scratch_dir: str, read_paths: list[str]
) -> dict[str, str]:
    keys = ("landlock-fs", "landlock-net", "landlock-scope")
    try:
        abi = _landlock.abi_version()
    except OSError as exc:
        return dict.fromkeys(keys, _why(exc))
    read = _unique([*read_roots(), plugin_dir, *read_paths, *policy.fs_read])
    write = _unique([scratch_dir, *policy.fs_write])
    try:
        _landlock.restrict(abi=abi, read=read, read_write=write, devices=DEVICES)
    except OSError as exc:
        return dict.fromkeys(keys, _why(exc))
    return {
        "landlock-fs": "applied",
        "landlock-net": "applied" if abi >= 4 else f"unavailable: Landlock ABI {abi} < 4",
        "landlock-scope": "applied" if abi >= 6 else f"unavailable: Landlock ABI {abi} < 6",
    }
