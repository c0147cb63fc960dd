"""Per-plugin counters and latency percentiles."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Final

import msgspec

__all__ = ["CallStats", "PluginStats"]

#: Latencies kept for percentiles: recent enough to reflect now, large enough for a p99.
LATENCY_WINDOW: Final = 2048


class PluginStats(msgspec.Struct, kw_only=True):
    """A snapshot of one plugin, as ``rt.stats()`` and ``cordon stats`` show it."""

    plugin: str
    state: str
    pid: int | None
    restarts: int
    calls: int
    errors: dict[str, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    cpu_seconds: float | None
    rss_bytes: int | None
    last_exit_reason: str | None
    last_exit: dict[str, Any] | None
    breaker_open: bool
    sandbox: dict[str, str]
    in_flight: int
    #: The worker's cgroup: ``applied (...)``, ``unavailable: why``, or ``not started``.
    cgroup: str = "not started"
    #: Worker exits the host did not ask for (crashes, kills for a quota or a timeout).
    crashes: int = 0
    #: What started the running worker: ``zygote`` (forked from the template) or ``spawn``;
    #: ``None`` while none runs.
    launcher: str | None = None
    #: Health pings sent to the plugin's workers: only to those that need one (an idle
    #: worker that has run nothing since it last answered is not asked again).
    health_checks: int = 0
    #: What reading and decoding the running worker's frames has cost the host's loop
    #: (thread CPU seconds), the longest single hold of it (ms), and how many times reading
    #: was paused because the worker's decode budget ran out (``DECODE_SHARE``): an honest
    #: plugin shows 0 pauses; a count that grows is a plugin sending more than it may cost.
    decode_cpu_seconds: float = 0.0
    decode_longest_ms: float = 0.0
    decode_pauses: int = 0


class CallStats:
    __slots__ = ("calls", "errors", "latencies")

    def __init__(self) -> None:
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, seconds: float, error: BaseException | None) -> None:
        self.calls += 1
        self.latencies.append(seconds)
        if error is not None:
            self.errors[type(error).__name__] += 1

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] * 1000.0
