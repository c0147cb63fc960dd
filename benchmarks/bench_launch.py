"""A sandboxed plugin's start, fork (or spawn) to first call answered: zygote vs spawn.

    .venv/bin/python benchmarks/bench_launch.py [--runs N] [--phases] [--gap S]

One runtime per launcher, side by side in one run, with every sandbox layer (``strict``) and
cgroups where the machine has them, no warm spares, for two plugins: the ``hello`` example
(three tools, each with its schema built at import) and a minimal one (one tool, nothing
imported: the launcher's own floor). Each run stops the plugin and times its next call:
start the process, hello, cgroup placement, initialize (limits, namespaces, Landlock,
seccomp, the plugin's import), activate, then the call's answer. A runtime's first call
(the zygote's own start included) is printed apart. Medians; the machines here are small
and shared, so read the columns against each other.

``--phases`` then times the hello plugin's forked starts step by step: the zygote is run as
``_launch_phases.py`` (the same zygote, each child recording the clock, its CPU time and page
faults at every launch step), and the host's fork request and the call's answer are marked
on the same monotonic clock. ``--gap`` waits that long before each start: on cgroup v1 a
move into a group after a quiet spell waits out an RCU grace period (~10 ms here), which
back-to-back starts do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cordon.runtime import Runtime  # noqa: E402
from cordon.runtime._supervise import _zygote  # noqa: E402
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


#: Where a timed worker leaves its marks, in its scratch dir (see _launch_phases.py).
PHASES_FILE: Final = ".launch-phases.json"
#: (label, from mark, to mark): the child's marks are its launch steps by the name of the
#: step starting there; ``t0``, ``fork_request``, ``fork_reply`` and ``answered`` are the host's.
PHASES: Final = (
    ("host: stop -> fork request", "t0", "fork_request"),
    ("fork round trip (zygote's clone)", "fork_request", "fork_reply"),
    ("clone -> child runs", "clone", "child"),
    ("child -> hello sent", "child", "receive_config"),
    ("hello -> initialize read (host)", "receive_config", "apply_limits"),
    ("limits + lock-down", "apply_limits", "capture_logging"),
    ("plugin import", "capture_logging", "report_ready"),
    ("ready sent", "report_ready", "serve"),
    ("serving -> call answered", "serve", "answered"),
    ("total", "t0", "answered"),
)


async def _phases(runs: int, gap: float, state: Path) -> None:
    script = str(Path(__file__).with_name("_launch_phases.py"))
    # The zygote launcher's own name for its spawn function, swapped for this run only.
    names = vars(_zygote)
    spawn = names["spawn"]

    def timed_zygote(argv: list[str], **kwargs: Any) -> Any:
        return spawn([argv[0], "-I", script, argv[-1], PHASES_FILE], **kwargs)

    rows: list[dict[str, float]] = []
    names["spawn"] = timed_zygote
    try:
        async with Runtime(_config(state, "zygote")) as rt:
            hello = await rt.load(HELLO)
            await hello.call("greet", {"name": "x"})
            launcher = rt.launcher
            assert isinstance(launcher, ZygoteLauncher)
            fork = launcher._fork_or_spawn
            host: dict[str, int] = {}

            async def marked(*args: Any, **kwargs: Any) -> Any:
                host["fork_request"] = time.perf_counter_ns()
                process = await fork(*args, **kwargs)
                host["fork_reply"] = time.perf_counter_ns()
                return process

            launcher._fork_or_spawn = marked  # type: ignore[method-assign]
            scratch = state / "scratch" / "hello" / PHASES_FILE
            for _ in range(runs):
                await hello.stop()
                await anyio.sleep(gap)
                host["t0"] = time.perf_counter_ns()
                await hello.call("greet", {"name": "x"})
                host["answered"] = time.perf_counter_ns()
                data = json.loads(scratch.read_text())
                at = {name: ns for name, ns, _cpu, _faults in data["marks"]} | host
                row = {label: (at[b] - at[a]) / 1e6 for label, a, b in PHASES}
                cpu = {name: ns for name, _ns, ns, _faults in data["marks"]}
                faults = {name: n for name, _ns, _cpu, n in data["marks"]}
                row["child CPU, fork -> serving"] = (cpu["serve"]) / 1e6
                row["child page faults, fork -> serving"] = faults["serve"]
                row |= {f"  lock-down: {k}": v * 1e3 for k, v in data["layers"].items()}
                rows.append(row)
    finally:
        names["spawn"] = spawn
    print(f"\nhello, forked, step by step ({runs} starts, {gap * 1e3:.0f} ms quiet before each)")
    print(f"{'phase':<38} {'median ms':>10} {'p10':>7} {'p90':>7}")
    for label in rows[0]:
        values = [r[label] for r in rows]
        q = statistics.quantiles(values, n=10)
        print(f"{label:<38} {statistics.median(values):>10.2f} {q[0]:>7.2f} {q[-1]:>7.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--phases", action="store_true", help="time a forked start by step")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds quiet before a start")
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
    if args.phases:
        with tempfile.TemporaryDirectory() as tmp:
            await _phases(args.runs, args.gap, Path(tmp))


if __name__ == "__main__":
    anyio.run(main)
