"""Kernel resource limits (``setrlimit``) from a :class:`cordon.protocol.Limits`.

Soft and hard limits are set equal (CPU: hard = soft + 1), so the plugin cannot raise them
back; seccomp later refuses ``setrlimit``/``prlimit64`` writes altogether, which also covers
a worker running as root (root could otherwise raise a hard limit).

* CPU: at the soft limit the kernel sends SIGXCPU, one second later SIGKILL; the host reads
  either signal as "cpu".
* FSIZE: CPython ignores SIGXFSZ at start-up, so a write past the limit fails with EFBIG
  instead of killing the worker.
* NPROC: only set for ``processes > 0``. Linux counts *threads* of the real uid against it
  (and not at all for uid 0), so ``processes == 0`` as an rlimit would forbid threads while
  stopping nothing as root; the worker never forks at all — seccomp denies fork/vfork/clone
  without CLONE_THREAD — so ``0`` is enforced there.
"""

from __future__ import annotations

import resource

from cordon.protocol import Limits

__all__ = ["apply_limits", "planned"]


def planned(limits: Limits) -> list[tuple[str, int, int, int]]:
    """``(name, resource, soft, hard)`` for every limit to set."""
    out: list[tuple[str, int, int, int]] = []
    if limits.memory is not None:
        out.append(("memory", resource.RLIMIT_AS, limits.memory, limits.memory))
    if limits.cpu_seconds is not None:
        out.append(("cpu", resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1))
    if limits.open_files is not None:
        out.append(("open_files", resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    if limits.file_size is not None:
        out.append(("file_size", resource.RLIMIT_FSIZE, limits.file_size, limits.file_size))
    if limits.processes:
        out.append(("processes", resource.RLIMIT_NPROC, limits.processes, limits.processes))
    out.append(("core", resource.RLIMIT_CORE, limits.core, limits.core))
    return out


def _clamp(value: int, ceiling: int) -> int:
    if ceiling == resource.RLIM_INFINITY:
        return value
    return min(value, ceiling)


def apply_limits(limits: Limits) -> dict[str, str]:
    """Set every limit; report ``{"rlimits": "applied" | "unavailable: why"}``.

    A limit above the inherited hard limit is clamped to it (only lowering is possible
    without privilege, and lower is what was asked for in spirit). Applying the same limits
    twice is a no-op, so the launch sequence may call this before ``lock_down`` does.
    """
    failed: list[str] = []
    for name, res, soft, hard in planned(limits):
        current = resource.getrlimit(res)
        hard = _clamp(hard, current[1])
        soft = min(_clamp(soft, current[1]), hard)
        if current == (soft, hard):
            continue  # already in force (lock_down applies them again): no syscall
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as exc:
            failed.append(f"{name}: {exc}")
    if failed:
        return {"rlimits": "unavailable: " + "; ".join(failed)}
    return {"rlimits": "applied"}
