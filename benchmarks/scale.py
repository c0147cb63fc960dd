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
"""

from __future__ import annotations

import argparse
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


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run_one(n: int, launcher: str, idle: float, settle: float) -> dict[str, Any]:
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
                began = time.perf_counter()

                async def call(handle: Any) -> None:
                    await handle.call("greet", {"name": "fleet"}, timeout=CALL_TIMEOUT)
                    answers.append(time.perf_counter() - began)

                async with anyio.create_task_group() as tg:
                    for d in dirs:
                        tg.start_soon(call, await rt.load(d))
                    loaded = time.perf_counter() - began
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
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    chosen = args.launcher or launchers()
    print(
        f"{'N':>5} {'launcher':>8} {'loaded':>8} {'first':>7} {'p50':>7} {'all':>7} "
        f"{'host RSS':>9} {'USS total':>10} {'idle CPU':>9} {'threads':>7} {'pings':>5}"
    )
    for n in args.n:
        for launcher in chosen:
            r = anyio.run(run_one, n, launcher, args.idle, args.settle)
            print(
                f"{r['n']:>5} {r['got']:>8} {r['loaded_s']:>7.2f}s {r['first_s']:>6.2f}s "
                f"{r['p50_s']:>6.2f}s {r['all_s']:>6.2f}s {r['host_rss_mib']:>6.0f}MiB "
                f"{r['workers_uss_mib']:>7.0f}MiB {r['idle_cpu_pct']:>8.2f}% "
                f"{r['threads']:>7} {r['idle_pings']:>5}",
                flush=True,
            )
    print(f"({os.cpu_count()} CPUs; python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
