"""A sandboxed plugin's start, fork (or spawn) to first call answered: zygote vs spawn.

    .venv/bin/python benchmarks/bench_launch.py [--runs N]

One runtime per launcher, side by side in one run, with every sandbox layer (``strict``) and
cgroups where the machine has them, no warm spares. Each run stops the ``hello`` example
plugin and times its next call: start the process, hello, cgroup placement, initialize (limits,
namespaces, Landlock, seccomp, the plugin's import), activate, then the call's answer. The
zygote's own start (once per runtime) is printed apart. Medians; the machines here are small
and shared, so read the two columns against each other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cordon.runtime import Runtime  # noqa: E402
from cordon.runtime._supervise._zygote import ZygoteLauncher  # noqa: E402

HELLO = ROOT / "examples" / "plugins" / "hello"


def _config(state: Path, launcher: str) -> dict[str, Any]:
    return {
        "runtime": {"state-dir": str(state), "warm-workers": 0, "launcher": launcher},
        "defaults": {"sandbox": "strict", "call-timeout": "30 s"},
    }


async def _measure(launcher: str, runs: int, state: Path) -> tuple[float, list[float], str]:
    async with Runtime(_config(state, launcher)) as rt:
        hello = await rt.load(HELLO)
        t0 = time.perf_counter()
        await hello.call("greet", {"name": "x"})
        first = time.perf_counter() - t0
        assert hello.worker is not None and hello.worker.process is not None
        got = hello.worker.process.launcher
        times = []
        for _ in range(runs):
            await hello.stop()
            t0 = time.perf_counter()
            await hello.call("greet", {"name": "x"})
            times.append(time.perf_counter() - t0)
        if isinstance(rt.launcher, ZygoteLauncher):
            got += f" ({rt.launcher.forks} forks)"
        return first, times, got


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, tuple[float, list[float], str]] = {}
        # Interleaved rounds, so a burst of load elsewhere on the machine hits both alike.
        rounds = 4
        for launcher in ("spawn", "zygote"):
            results[launcher] = (0.0, [], "")
        for r in range(rounds):
            for launcher in ("spawn", "zygote"):
                first, times, got = await _measure(
                    launcher, max(1, args.runs // rounds), Path(tmp) / f"{launcher}{r}"
                )
                prev_first, prev, _ = results[launcher]
                results[launcher] = (max(prev_first, first), prev + times, got)
    print(f"{'launcher':<24} {'runs':>5} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}")
    for launcher, (_first, times, got) in results.items():
        q = statistics.quantiles(times, n=10)
        print(
            f"{got:<24} {len(times):>5} {statistics.median(times) * 1e3:>10.1f}"
            f" {q[0] * 1e3:>8.1f} {q[-1] * 1e3:>8.1f}"
        )
    for launcher, (first, _times, _got) in results.items():
        print(f"first call of a runtime ({launcher}, zygote start included): {first * 1e3:.0f} ms")


if __name__ == "__main__":
    anyio.run(main)
