"""A fleet of hello plugins on one host: for each N and each launcher, the time from the first
``load`` to the first answer and to every answer, then the host's cost once they idle.

    .venv/bin/python benchmarks/scale.py                      # N = 10, 100; every launcher
    .venv/bin/python benchmarks/scale.py -n 1000 --launcher zygote --idle 10

Each plugin is its own copy of a one-tool hello plugin (ids ``hello-0000``...), loaded with
``rt.load`` and called (``greet``) as soon as it is loaded, under the default sandbox and
``cgroups = "auto"``. Printed per run: time until every plugin is loaded (registered), to the
first answer, to every answer; the host's RSS and thread count; the workers' total USS; the
host's CPU while all N workers idle (``--idle`` seconds, measured with getrusage, after
``--settle`` seconds in which each worker gets the one ping that finds it quiet), as a
percentage of one core, and the health pings sent meanwhile. Everything runs inside one
``async with Runtime``: leaving it stops every worker, and the plugin copies live in a
temporary directory removed at the end.

``--account`` adds, per run, where the machine's CPU went from the first ``load`` to every
answer, per plugin: the host (its main thread and the rest), the zygote, the workers (each
one's whole CPU so far, read from ``/proc/<pid>/stat`` before any stops), kernel threads,
and what the machine spent beyond those (``/proc/stat``: other processes, and ones that
ended meanwhile). Before each run (with or without ``--account``) it waits, bounded, until
kernel threads are quiet, so a run does not pay for the previous run's teardown (netns and
cgroup cleanup). ``--profile
FILE`` writes a cProfile (CPU time) of the host over the same window, whose ends are printed
as CLOCK_MONOTONIC seconds (for ``perf record -k monotonic``, then ``perf report --time``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import structlog

from cordon.runtime import Runtime
from cordon.runtime._errors import ConfigError
from cordon.runtime._settings._config import parse_config

#: Each call's deadline: generous, since under a batch of 1000 spawned workers (~90 ms of
#: CPU each) the last waits its turn for over a minute.
CALL_TIMEOUT = 600.0
#: The whole run of one N: every plugin answered, or the run is reported as failed.
RUN_DEADLINE = 900.0

MANIFEST = """\
[plugin]
id = "{id}"
name = "Hello {n}"
version = "1.0.0"
description = "Greets people"
entry = "fleet_hello:plugin"
requires-cordon = ">=0.1"
"""

MODULE = """\
from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}"
"""


def make_plugins(root: Path, n: int) -> list[Path]:
    dirs = []
    for i in range(n):
        d = root / f"hello-{i:04d}"
        d.mkdir()
        (d / "plugin.toml").write_text(MANIFEST.format(id=f"hello-{i:04d}", n=i))
        (d / "fleet_hello.py").write_text(MODULE)
        dirs.append(d)
    return dirs


def launchers() -> list[str]:
    """The launchers this build knows (``[runtime] launcher``), spawn first."""
    known = []
    for name in ("spawn", "zygote"):
        try:
            parse_config({"runtime": {"launcher": name}}, source="<bench>")
        except ConfigError:
            continue
        known.append(name)
    return known or ["(default)"]


def host_threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


#: Before a run, kernel threads (netns and cgroup teardown of the previous run's workers)
#: must have used under QUIET_SHARE of a CPU over QUIET_WINDOW seconds; waited for at most
#: QUIET_DEADLINE seconds (then the run goes ahead: other work on the machine may keep them
#: busy, and ``--account`` says how long it waited and what they spent meanwhile).
QUIET_SHARE = 0.02
QUIET_WINDOW = 1.0
QUIET_DEADLINE = 30.0
TICK = os.sysconf("SC_CLK_TCK")


def task_cpu(task: str) -> float:
    """One thread's CPU seconds (``/proc/<task>/schedstat``, in ns: ``stat``'s clock ticks
    round a worker's few milliseconds to nothing); 0 once it is gone."""
    try:
        return int(Path(f"/proc/{task}/schedstat").read_text().split()[0]) / 1e9
    except OSError:
        return 0.0


def proc_cpu(pid: int) -> float:
    """A process's CPU seconds: its live threads' (a thread that ended is not counted)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    return sum(task_cpu(f"{pid}/task/{t}") for t in tasks)


def kernel_threads_cpu() -> float:
    """CPU seconds of every kernel thread (kthreadd's children) alive now."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == "2" or entry.name == "2":
            total += task_cpu(entry.name)
    return total


def machine_cpu() -> tuple[float, float]:
    """Every CPU's busy seconds (all but idle and iowait), and softirq + irq among them."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    return busy / TICK, (f[5] + f[6]) / TICK


def host_thread_cpu() -> tuple[float, float]:
    """This process's main thread's CPU seconds, and its other threads' (alive now)."""
    me = os.getpid()
    main = task_cpu(f"{me}/task/{me}")
    others = sum(task_cpu(f"{me}/task/{t}") for t in os.listdir("/proc/self/task") if int(t) != me)
    return main, others


def wait_quiet() -> tuple[float, float]:
    """Wait until kernel threads are quiet (see QUIET_SHARE): the seconds waited, and the
    CPU seconds kernel threads used meanwhile (the previous run's teardown, mostly)."""
    began, k_began = time.perf_counter(), kernel_threads_cpu()
    while time.perf_counter() - began < QUIET_DEADLINE:
        k0 = kernel_threads_cpu()
        time.sleep(QUIET_WINDOW)  # the window measured, not a synchronisation
        if kernel_threads_cpu() - k0 < QUIET_SHARE * QUIET_WINDOW:
            break
    return time.perf_counter() - began, kernel_threads_cpu() - k_began


class Account:
    """Machine CPU by process kind over one window (see the module docstring)."""

    def __init__(self) -> None:
        self.machine, self.softirq = machine_cpu()
        self.kthreads = kernel_threads_cpu()
        self.host_main, self.host_other = host_thread_cpu()
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)

    def close(self, zygote_pid: int | None, worker_pids: list[int], n: int) -> dict[str, float]:
        machine, softirq = machine_cpu()
        main, other = host_thread_cpu()
        rows = {
            "host main thread": main - self.host_main,
            "host other threads": other - self.host_other,
            "zygote": proc_cpu(zygote_pid) if zygote_pid else 0.0,
            "workers": sum(proc_cpu(p) for p in worker_pids),
            "kernel threads": kernel_threads_cpu() - self.kthreads,
        }
        rows["(softirq+irq, within the above)"] = softirq - self.softirq
        counted = sum(v for k, v in rows.items() if not k.startswith("("))
        rows["machine beyond these"] = machine - self.machine - counted
        rows["machine total"] = machine - self.machine
        return {k: v * 1000 / n for k, v in rows.items()}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run_one(
    n: int,
    launcher: str,
    idle: float,
    settle: float,
    account: bool,
    profile: str | None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cordon-scale-") as tmp:
        root = Path(tmp)
        (root / "plugins").mkdir()
        dirs = make_plugins(root / "plugins", n)
        runtime: dict[str, Any] = {"state-dir": str(root / "state")}
        if launcher != "(default)":
            runtime["launcher"] = launcher
        limit = f"{CALL_TIMEOUT} s"
        defaults = {"call-timeout": limit, "max-call-timeout": limit}
        config = {"runtime": runtime, "defaults": defaults}
        answers: list[float] = []
        with anyio.fail_after(RUN_DEADLINE):
            async with Runtime(config) as rt:
                acct = Account() if account else None
                prof = cProfile.Profile(time.thread_time) if profile else None
                if prof is not None:
                    prof.enable()
                window = [time.monotonic()]
                began = time.perf_counter()

                async def call(handle: Any) -> None:
                    await handle.call("greet", {"name": "fleet"}, timeout=CALL_TIMEOUT)
                    answers.append(time.perf_counter() - began)

                async with anyio.create_task_group() as tg:
                    for d in dirs:
                        tg.start_soon(call, await rt.load(d))
                    loaded = time.perf_counter() - began
                window.append(time.monotonic())
                if prof is not None and profile is not None:
                    prof.disable()
                    prof.dump_stats(profile)
                accounted = None
                if acct is not None:
                    zygote = getattr(rt.launcher, "pid", None)
                    pids = [s.pid for s in rt.stats().values() if s.pid is not None]
                    accounted = acct.close(zygote, pids, n)
                # Each worker is pinged once after it goes quiet (health-interval, 5 s by
                # default): the idle measured is what follows.
                await anyio.sleep(settle)
                pings_before = sum(s.health_checks for s in rt.stats().values())
                cpu0, wall0 = cpu_seconds(), time.perf_counter()
                await anyio.sleep(idle)  # the quantity measured: the host's cost while idle
                idle_cpu = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
                stats = rt.stats()
                pings = sum(s.health_checks for s in stats.values()) - pings_before
                uss = 0
                for s in stats.values():
                    if s.pid is not None:
                        try:
                            uss += psutil.Process(s.pid).memory_full_info().uss
                        except psutil.Error:
                            pass
                launched = {getattr(s, "launcher", None) for s in stats.values()} - {None}
                result = {
                    "n": n,
                    "launcher": launcher,
                    "got": "/".join(sorted(map(str, launched))) or launcher,
                    "loaded_s": loaded,
                    "first_s": min(answers),
                    "p50_s": statistics.median(answers),
                    "all_s": max(answers),
                    "host_rss_mib": psutil.Process().memory_info().rss / 2**20,
                    "workers_uss_mib": uss / 2**20,
                    "idle_cpu_pct": idle_cpu * 100,
                    "threads": host_threads(),
                    "idle_pings": pings,
                    "account": accounted,
                    "window": window,
                }
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, nargs="+", default=[10, 100], help="fleet sizes")
    parser.add_argument("--launcher", nargs="+", default=None, help="spawn, zygote (default: all)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    parser.add_argument(
        "--settle", type=float, default=6.0, help="seconds after every answer, before measuring"
    )
    parser.add_argument(
        "--account", action="store_true", help="machine CPU per plugin by process kind"
    )
    parser.add_argument("--profile", default=None, help="write a cProfile of the host here")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    chosen = args.launcher or launchers()
    print(
        f"{'N':>5} {'launcher':>8} {'loaded':>8} {'first':>7} {'p50':>7} {'all':>7} "
        f"{'host RSS':>9} {'USS total':>10} {'idle CPU':>9} {'threads':>7} {'pings':>5}"
    )
    for n in args.n:
        for launcher in chosen:
            # Always: a run must not pay for the previous one's teardown (netns, cgroups).
            waited, teardown = wait_quiet()
            r = anyio.run(run_one, n, launcher, args.idle, args.settle, args.account, args.profile)
            print(
                f"{r['n']:>5} {r['got']:>8} {r['loaded_s']:>7.2f}s {r['first_s']:>6.2f}s "
                f"{r['p50_s']:>6.2f}s {r['all_s']:>6.2f}s {r['host_rss_mib']:>6.0f}MiB "
                f"{r['workers_uss_mib']:>7.0f}MiB {r['idle_cpu_pct']:>8.2f}% "
                f"{r['threads']:>7} {r['idle_pings']:>5}",
                flush=True,
            )
            if r["account"] is not None:
                print(
                    f"      CPU ms per plugin, load -> every answer (waited {waited:.1f}s for "
                    f"kernel threads to be quiet; they used {teardown:.2f}s CPU meanwhile):"
                )
                for k, v in r["account"].items():
                    print(f"        {k:<32} {v:7.2f}")
                print(f"      window (CLOCK_MONOTONIC): {r['window'][0]:.6f},{r['window'][1]:.6f}")
    print(f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    print(f"({os.cpu_count()} CPUs; python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
