"""A sandboxed plugin's start, fork (or spawn) to first call answered: zygote vs spawn.

    .venv/bin/python benchmarks/bench_launch.py [--runs N]

One runtime per launcher, side by side in one run, with every sandbox layer (``strict``) and
cgroups where the machine has them, no warm spares, for two plugins: the ``hello`` example
(three tools, each with its schema built at import) and a minimal one (one tool, nothing
imported: the launcher's own floor). Each run stops the plugin and times its next call:
start the process, hello, cgroup placement, initialize (limits, namespaces, Landlock,
seccomp, the plugin's import), activate, then the call's answer. A runtime's first call
(the zygote's own start included) is printed apart. Medians; the machines here are small
and shared, so read the columns against each other.
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
MINIMAL_TOML = """[plugin]
id = "minimal"
name = "Minimal"
version = "1.0.0"
description = "One tool, nothing imported."
entry = "minimal_plugin:plugin"
requires-cordon = ">=0.1"
"""
MINIMAL_PY = """from cordon.worker import Plugin

plugin = Plugin()


@plugin.tool
async def greet(ctx, name: str) -> str:
    return name
"""


def _minimal(where: Path) -> Path:
    where.mkdir()
    (where / "plugin.toml").write_text(MINIMAL_TOML)
    (where / "minimal_plugin.py").write_text(MINIMAL_PY)
    return where


def _config(state: Path, launcher: str) -> dict[str, Any]:
    return {
        "runtime": {"state-dir": str(state), "warm-workers": 0, "launcher": launcher},
        "defaults": {"sandbox": "strict", "call-timeout": "30 s"},
    }


async def _measure(
    launcher: str, plugin: Path, runs: int, state: Path
) -> tuple[float, list[float], str]:
    async with Runtime(_config(state, launcher)) as rt:
        hello = await rt.load(plugin)
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
        plugins = {"hello": HELLO, "minimal": _minimal(Path(tmp) / "minimal")}
        results: dict[tuple[str, str], tuple[float, list[float], str]] = {}
        # Interleaved rounds, so a burst of load elsewhere on the machine hits both alike.
        rounds = 4
        for r in range(rounds):
            for plugin, path in plugins.items():
                for launcher in ("spawn", "zygote"):
                    first, times, got = await _measure(
                        launcher,
                        path,
                        max(1, args.runs // rounds),
                        Path(tmp) / f"{plugin}-{launcher}{r}",
                    )
                    prev_first, prev, _ = results.get((plugin, launcher), (0.0, [], ""))
                    results[(plugin, launcher)] = (max(prev_first, first), prev + times, got)
    print("stop -> first call answered (fork or spawn, lock-down, import, activate, call)")
    print(
        f"{'plugin':<9} {'launcher':<18} {'runs':>5} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}"
    )
    for (plugin, _launcher), (_first, times, got) in results.items():
        q = statistics.quantiles(times, n=10)
        print(
            f"{plugin:<9} {got:<18} {len(times):>5} {statistics.median(times) * 1e3:>10.1f}"
            f" {q[0] * 1e3:>8.1f} {q[-1] * 1e3:>8.1f}"
        )
    for (plugin, launcher), (first, _times, _got) in results.items():
        print(f"slowest first call of a runtime, {plugin}/{launcher}: {first * 1e3:.0f} ms")


if __name__ == "__main__":
    anyio.run(main)
