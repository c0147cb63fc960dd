"""A sandboxed plugin's start, fork (or spawn) to first call answered: zygote vs spawn.

    .venv/bin/python benchmarks/bench_launch.py [--runs N] [--phases | --phases-only] [--gap S]
        [--spare]

On a shared machine, run it under ``chrt -f 10`` (as root): the other processes' load then
does not preempt the measured ones, and the medians mean something.

One runtime per launcher, side by side in one run, with every sandbox layer (``strict``) and
cgroups where the machine has them, no warm spares, for two plugins: the ``hello`` example
(three tools, each with its schema built at import) and a minimal one (one tool, nothing
imported: the launcher's own floor). Each run stops the plugin and times its next call:
start the process, initialize (limits, namespaces, Landlock, seccomp, the wait for the
cgroup move, the plugin's import), activate, then the call's answer. The zygote runs twice,
in cordon's ``pipelined`` order (initialize and activate sent at once, the move overlapping
the lock-down) and in the ``serial`` order before it (hello, move, initialize, activate: one
after the other), so the two are measured side by side under the same load. Each start's CPU
is printed too (the host process's, and the worker's whole life as its reaped child): those
the machine's load moves far less than wall time. A runtime's first call (the zygote's own
start included) is printed apart. Medians; the machines here are small and shared, so read
the columns against each other.

``--phases`` then times the hello plugin's forked starts step by step: the zygote is run as
``_launch_phases.py`` (the same zygote, each child recording the clock, its CPU time and page
faults at every launch step), and the host's fork request and the call's answer are marked
on the same monotonic clock. ``--spare`` also times a start that claims a warm spare
(``warm-workers = 1``, the pool refilled before each start): a separate figure, the fork
already done. ``--gap`` waits that long before each start: on cgroup v1 a
move into a group after a quiet spell waits out an RCU grace period (~10 ms here), which
back-to-back starts do not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cordon.runtime import Runtime  # noqa: E402
from cordon.runtime._supervise import _zygote  # noqa: E402
from cordon.runtime._supervise._worker import WorkerProcess  # noqa: E402
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


#: How a start is sequenced: ``pipelined`` is cordon's (initialize and activate sent at once,
#: the cgroup move overlapping the lock-down); ``serial`` the order before it, for the
#: side-by-side (wait for the hello, then the move, then initialize, then activate).
ORDERS: Final = ("pipelined", "serial")


@contextlib.contextmanager
def _order(order: str) -> Iterator[None]:
    """Start workers in ``order`` while inside (a benchmark-only switch: each worker is
    marked as a stand-in peer's, which cordon initializes only after its hello, is sent
    initialize only once it is in its cgroups, and activate only once initialized)."""
    if order == "pipelined":
        yield
        return
    run, initialize = WorkerProcess.run, WorkerProcess._initialize_phase

    async def serial_run(self: WorkerProcess, **kwargs: Any) -> None:
        self._own_command = False
        self.activate_early = False
        await run(self, **kwargs)

    async def serial_initialize(self: WorkerProcess) -> None:
        await self._placed.wait()  # set by the move, or by the exit
        await initialize(self)

    setattr(WorkerProcess, "run", serial_run)  # noqa: B010 - a method swapped for the run
    setattr(WorkerProcess, "_initialize_phase", serial_initialize)  # noqa: B010
    try:
        yield
    finally:
        setattr(WorkerProcess, "run", run)  # noqa: B010
        setattr(WorkerProcess, "_initialize_phase", initialize)  # noqa: B010


class Sample(NamedTuple):
    first: float
    times: list[float]
    got: str
    #: CPU seconds per start: the host process (all its threads), and its reaped children
    #: (the workers: forked by the zygote as the host's own children).
    host_cpu: list[float]
    worker_cpu: list[float]


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


async def _measure(launcher: str, plugin: Path, runs: int, state: Path, order: str) -> Sample:
    async with Runtime(_config(state, launcher)) as rt:
        hello = await rt.load(plugin)
        t0 = time.perf_counter()
        await hello.call("greet", {"name": "x"})
        first = time.perf_counter() - t0
        assert hello.worker is not None and hello.worker.process is not None
        got = hello.worker.process.launcher
        times = []
        host_cpu = []
        worker_cpu = []
        with _order(order):
            for _ in range(runs):
                await hello.stop()  # the previous worker is reaped: its CPU is counted
                host0, kids0 = _cpu()
                t0 = time.perf_counter()
                await hello.call("greet", {"name": "x"})
                times.append(time.perf_counter() - t0)
                host1, _ = _cpu()
                await hello.stop()
                _, kids1 = _cpu()
                host_cpu.append(host1 - host0)
                worker_cpu.append(kids1 - kids0)
        if isinstance(rt.launcher, ZygoteLauncher):
            got += f" ({rt.launcher.forks} forks)"
        return Sample(first, times, got, host_cpu, worker_cpu)


#: How long a refill of the spare pool may take before the benchmark gives up.
SPARE_WAIT: Final = 30.0


async def _measure_spare(runs: int, state: Path) -> list[float]:
    """Stop -> first call answered when one warm spare waits (``warm-workers = 1``): the
    fork, the interpreter's after-fork work and the hello are done before the request, as
    in Android's pre-forked pool. Not the fork figure: before each start the benchmark
    waits for the pool's refill, which a burst of starts would not get."""
    config = _config(state, "zygote")
    config["runtime"]["warm-workers"] = 1
    times = []
    async with Runtime(config) as rt:
        hello = await rt.load(HELLO)
        await hello.call("greet", {"name": "x"})
        for _ in range(runs):
            await hello.stop()
            with anyio.fail_after(SPARE_WAIT):
                while not rt._spares:
                    await rt._spare_added.wait()
            t0 = time.perf_counter()
            await hello.call("greet", {"name": "x"})
            times.append(time.perf_counter() - t0)
            assert hello.worker is not None and hello.worker.process is not None
    return times


#: Where a timed worker leaves its marks, in its scratch dir (see _launch_phases.py).
PHASES_FILE: Final = ".launch-phases.json"
#: (label, from mark, to mark): the child's marks are its launch steps by the name of the
#: step starting there; ``t0``, ``fork_request``, ``fork_reply`` and ``answered`` are the host's.
PHASES: Final = (
    ("host: stop -> fork request", "t0", "fork_request"),
    ("fork round trip (zygote's clone)", "fork_request", "fork_reply"),
    ("clone -> child runs", "clone", "child"),
    ("child -> hello sent", "child", "receive_config"),
    ("hello -> initialize read", "receive_config", "apply_limits"),
    ("limits + lock-down", "apply_limits", "capture_logging"),
    ("waiting for $/placed", "await_placement", "import_plugin"),
    ("plugin import", "import_plugin", "report_ready"),
    ("ready sent", "report_ready", "serve"),
    ("serve -> its loop runs", "serve", "loop"),
    ("loop runs -> activate read", "loop", "activate"),
    ("initialize answer -> read (host)", "serve", "initialized"),
    ("activate read -> answer read (host)", "activate", "activated"),
    ("-> call sent (host)", "activated", "call_sent"),
    ("call sent -> read (worker)", "call_sent", "invoke"),
    ("-> call answered", "invoke", "answered"),
    ("total", "t0", "answered"),
)


async def _phases(runs: int, gap: float, state: Path, order: str) -> None:
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
            initialize, activate = WorkerProcess._initialize_phase, WorkerProcess.activate
            invoke = WorkerProcess.invoke_decoded

            async def initialized(self: WorkerProcess) -> None:
                await initialize(self)
                host["initialized"] = time.perf_counter_ns()

            async def activated(self: WorkerProcess) -> None:
                await activate(self)
                host["activated"] = time.perf_counter_ns()

            def call_sent(self: WorkerProcess, *args: Any, **kwargs: Any) -> Any:
                host["call_sent"] = time.perf_counter_ns()
                return invoke(self, *args, **kwargs)

            marks = {"activate": activated, "invoke_decoded": call_sent}
            scratch = state / "scratch" / "hello" / PHASES_FILE
            for _ in range(runs):
                await hello.stop()
                await anyio.sleep(gap)
                host["t0"] = time.perf_counter_ns()
                with _order(order):
                    # Inside the order's own swap: its serial initialize is the one marked.
                    marks["_initialize_phase"] = initialized
                    initialize = WorkerProcess._initialize_phase
                    saved = {name: getattr(WorkerProcess, name) for name in marks}
                    for name, marked_method in marks.items():
                        setattr(WorkerProcess, name, marked_method)
                    try:
                        await hello.call("greet", {"name": "x"})
                    finally:
                        for name, method in saved.items():
                            setattr(WorkerProcess, name, method)
                host["answered"] = time.perf_counter_ns()
                data = json.loads(scratch.read_text())
                at = {name: ns for name, ns, _cpu, _faults in data["marks"]} | host
                row = {label: (at[b] - at[a]) / 1e6 for label, a, b in PHASES}
                cpu = {name: ns for name, _ns, ns, _faults in data["marks"]}
                faults = {name: n for name, _ns, _cpu, n in data["marks"]}
                row["child CPU, fork -> serving"] = (cpu["serve"]) / 1e6
                row["child CPU, serving -> call read"] = (cpu["invoke"] - cpu["serve"]) / 1e6
                row["child page faults, fork -> serving"] = faults["serve"]
                row["child page faults, serving -> call read"] = faults["invoke"] - faults["serve"]
                for label, a, b in PHASES:
                    if a in faults and b in faults and a != "clone":
                        row[f"  faults: {label}"] = faults[b] - faults[a]
                row |= {f"  lock-down: {k}": v * 1e3 for k, v in data["layers"].items()}
                rows.append(row)
    finally:
        names["spawn"] = spawn
    print(
        f"\nhello, forked, {order}, step by step ({runs} starts,"
        f" {gap * 1e3:.0f} ms quiet before each)"
    )
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
    parser.add_argument("--phases-only", action="store_true", help="only --phases")
    parser.add_argument(
        "--spare", action="store_true", help="also: a start with one warm spare waiting"
    )
    args = parser.parse_args()
    if args.phases_only:
        for order in ORDERS:
            with tempfile.TemporaryDirectory() as tmp:
                await _phases(args.runs, args.gap, Path(tmp), order)
        return
    with tempfile.TemporaryDirectory() as tmp:
        plugins = {"hello": HELLO, "minimal": _minimal(Path(tmp) / "minimal")}
        results: dict[tuple[str, str, str], Sample] = {}
        # Interleaved rounds, so a burst of load elsewhere on the machine hits all alike.
        rounds = 4
        for r in range(rounds):
            for plugin, path in plugins.items():
                for launcher, order in [("spawn", "pipelined"), *(("zygote", o) for o in ORDERS)]:
                    got = await _measure(
                        launcher,
                        path,
                        max(1, args.runs // rounds),
                        Path(tmp) / f"{plugin}-{launcher}-{order}{r}",
                        order,
                    )
                    key = (plugin, launcher, order)
                    prev = results.get(key)
                    if prev is not None:
                        got = Sample(
                            max(prev.first, got.first),
                            prev.times + got.times,
                            got.got,
                            prev.host_cpu + got.host_cpu,
                            prev.worker_cpu + got.worker_cpu,
                        )
                    results[key] = got
    print("stop -> first call answered (fork or spawn, lock-down, import, activate, call);")
    print("CPU per start: the host process, and the worker (its whole life, to its stop)")
    print(
        f"{'plugin':<9} {'launcher':<18} {'order':<10} {'runs':>5} {'median ms':>10}"
        f" {'p10 ms':>8} {'p90 ms':>8} {'host CPU ms':>12} {'worker CPU ms':>14}"
    )
    for (plugin, _launcher, order), got in results.items():
        q = statistics.quantiles(got.times, n=10)
        print(
            f"{plugin:<9} {got.got:<18} {order:<10} {len(got.times):>5}"
            f" {statistics.median(got.times) * 1e3:>10.1f} {q[0] * 1e3:>8.1f} {q[-1] * 1e3:>8.1f}"
            f" {statistics.median(got.host_cpu) * 1e3:>12.2f}"
            f" {statistics.median(got.worker_cpu) * 1e3:>14.2f}"
        )
    for (plugin, launcher, order), got in results.items():
        where = f"{plugin}/{launcher}/{order}"
        print(f"slowest first call of a runtime, {where}: {got.first * 1e3:.0f} ms")
    if args.spare:
        with tempfile.TemporaryDirectory() as tmp:
            times = await _measure_spare(args.runs, Path(tmp))
        q = statistics.quantiles(times, n=10)
        print(
            "hello, zygote, ONE WARM SPARE waiting (its fork and hello done before the request;"
            " not the fork figure):"
        )
        print(
            f"  stop -> first call answered, {len(times)} runs: median"
            f" {statistics.median(times) * 1e3:.1f} ms"
            f" (p10 {q[0] * 1e3:.1f}, p90 {q[-1] * 1e3:.1f})"
        )
    if args.phases:
        for order in ORDERS:
            with tempfile.TemporaryDirectory() as tmp:
                await _phases(args.runs, args.gap, Path(tmp), order)


if __name__ == "__main__":
    anyio.run(main)
