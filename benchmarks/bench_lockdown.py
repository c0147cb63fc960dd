"""What the worker's lock-down costs at start, step by step, and per operation afterwards.

    .venv/bin/python benchmarks/bench_lockdown.py [--runs N]

Each run is a fresh ``python -I`` child (the lock-down is irreversible) that imports the
sandbox package, applies every layer with per-step timings, and then times a hot
``open/close`` of /dev/null — which crosses the audit hook, Landlock and seccomp — against the
same loop measured before the lock-down, and a ``getpriority`` loop that runs the seccomp
program on every call (no audit event, no Landlock hook). Medians over the runs; machines here
are small and noisy, so read the relative sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import cordon.worker  # the worker imports both anyway
    from cordon.protocol import Limits, SandboxPolicy
    t0 = time.perf_counter()
    from cordon.worker._sandbox import _lockdown
    imported = time.perf_counter() - t0

    def hot(n=20000):
        t = time.perf_counter()
        for _ in range(n):
            os.close(os.open("/dev/null", os.O_RDONLY))
        return (time.perf_counter() - t) / n

    def plain(n=100000):
        # getpriority(PRIO_PROCESS, 0): no audit event, no Landlock hook, and a rule that
        # checks its arguments, so the kernel cannot cache it as always allowed and runs the
        # seccomp program on every call: the filter's own per-syscall cost. (A call the filter
        # always allows, getppid say, skips it: the kernel's cache, filled at install.)
        t = time.perf_counter()
        for _ in range(n):
            os.getpriority(os.PRIO_PROCESS, 0)
        return (time.perf_counter() - t) / n

    before = hot()
    plain_before = plain()
    timings = {}
    t0 = time.perf_counter()
    _lockdown.lock_down(
        plugin_id="bench", policy=SandboxPolicy(mode="strict"),
        limits=Limits(open_files=256, cpu_seconds=60, processes=0),
        plugin_dir=sys.argv[1], scratch_dir=sys.argv[2], read_paths=[], keep_fds=[0, 1, 2],
        timings=timings,
    )
    total = time.perf_counter() - t0
    after = hot()
    plain_after = plain()
    print(json.dumps({"import": imported, **timings, "total": total,
                      "open_before": before, "open_after": after,
                      "plain_before": plain_before, "plain_after": plain_after}))
    """
)

STEPS = (
    "import",
    "fds",
    "rlimits",
    "netns",  # user + net + IPC namespaces, one unshare
    "no-new-privs",
    "landlock",
    "seccomp",
    "audit-hook",
    "total",
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    opts = ap.parse_args()
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        plugin, scratch = Path(tmp, "plugin"), Path(tmp, "scratch")
        plugin.mkdir()
        scratch.mkdir()
        for _ in range(opts.runs):
            done = subprocess.run(
                [sys.executable, "-I", "-c", CHILD, str(plugin), str(scratch)],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
            rows.append(json.loads(done.stdout))
    print(f"lock-down cost at worker start (median of {opts.runs} fresh processes)")
    print(f"{'step':<16}{'median':>12}{'min':>12}{'max':>12}")
    for step in STEPS:
        vals = [r[step] * 1e3 for r in rows]
        med, lo, hi = statistics.median(vals), min(vals), max(vals)
        print(f"{step:<16}{med:>10.3f}ms{lo:>10.3f}ms{hi:>10.3f}ms")
    before = statistics.median(r["open_before"] for r in rows) * 1e6
    after = statistics.median(r["open_after"] for r in rows) * 1e6
    print(f"\nopen+close /dev/null: {before:.2f} µs before, {after:.2f} µs after lock-down")
    print(f"(audit hook + Landlock + seccomp on a hot path: x{after / before:.2f})")
    before = statistics.median(r["plain_before"] for r in rows) * 1e9
    after = statistics.median(r["plain_after"] for r in rows) * 1e9
    print(f"getpriority (runs the seccomp program): {before:.0f} ns before, {after:.0f} ns after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
