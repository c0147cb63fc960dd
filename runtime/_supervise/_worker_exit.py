"""How a worker ended, as the host tells it: :class:`ExitInfo` and the classification of
an exit status into a reason (:func:`_classify`).

Pure data and functions, apart from any process: the process's life (``_worker_life``) reaps
the worker and hands the status here; the plugin handle and the statistics read the result.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Final

from cordon.protocol import CordonError, QuotaExceeded, WorkerCrashed

__all__ = ["QUOTA_REASONS", "ExitInfo"]

#: Exit reasons that are a resource limit: in-flight calls get QuotaExceeded(kind=reason).
QUOTA_REASONS: Final = ("memory", "cpu", "file-size")


@dataclass(slots=True)
class ExitInfo:
    """How a worker ended: the classified reason plus the raw status."""

    reason: str
    returncode: int | None
    signal: int | None
    detail: str | None
    stderr_tail: list[str]
    at: float = field(default_factory=time.time)
    #: The configured limit behind a quota reason (bytes for memory, seconds for cpu, ...).
    limit: int | float | None = None

    def error(self, plugin_id: str) -> CordonError:
        """What an in-flight call sees: :class:`QuotaExceeded` when the worker died of a
        resource limit (reason ``memory``, ``cpu``, ``file-size``: killed by the kernel for it,
        died of a MemoryError, or killed by the RSS watchdog), :class:`WorkerCrashed`
        otherwise. The quota error's message carries the exit status and detail."""
        if self.reason in QUOTA_REASONS:
            how = f"signal {self.signal}" if self.signal else f"exit code {self.returncode}"
            extra = f": {self.detail}" if self.detail else ""
            last = f"; last output: {self.stderr_tail[-1]}" if self.stderr_tail else ""
            return QuotaExceeded(
                f"plugin {plugin_id!r} exceeded its {self.reason} quota ({self.limit}); "
                f"its worker died ({how}){extra}{last}",
                kind=self.reason,
                limit=self.limit,
                plugin=plugin_id,
            )
        return WorkerCrashed(
            plugin=plugin_id,
            reason=self.reason,
            returncode=self.returncode,
            signal=self.signal,
            stderr_tail=self.stderr_tail,
            detail=self.detail,
        )


def _died_of_memory_error(stderr_tail: list[str]) -> bool:
    """The last traceback the worker printed ends in MemoryError (an unhandled one, or the
    interpreter's fatal "Cannot recover from MemoryError")."""
    return any(
        line.startswith("MemoryError") or ("Fatal Python error" in line and "MemoryError" in line)
        for line in stderr_tail[-5:]
    )


def _classify(
    returncode: int | None,
    kill_reason: str | None,
    *,
    stderr_tail: list[str] | None = None,
    cpu_seconds: float | None = None,
    cpu_limit: float | None = None,
) -> tuple[str, int | None]:
    """The exit reason: the host's own kill reason first; then SIGXCPU (RLIMIT_CPU soft),
    SIGKILL with the sampled CPU time at the limit (RLIMIT_CPU hard), SIGXFSZ (only if the
    plugin un-ignored it; CPython ignores it, so writes fail with EFBIG instead), a traceback
    ending in MemoryError; otherwise ``signal`` or ``exited``."""
    sig = -returncode if returncode is not None and returncode < 0 else None
    if kill_reason:
        return kill_reason, sig
    if sig == signal.SIGXCPU:
        return "cpu", sig
    if (
        sig == signal.SIGKILL
        and cpu_limit is not None
        and cpu_seconds is not None
        and cpu_seconds >= cpu_limit
    ):
        return "cpu", sig
    if sig == signal.SIGXFSZ:
        return "file-size", sig
    if returncode != 0 and stderr_tail and _died_of_memory_error(stderr_tail):
        return "memory", sig
    if sig is not None:
        return "signal", sig
    return "exited", None
