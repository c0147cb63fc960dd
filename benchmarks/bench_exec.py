"""What a granted command's isolation costs per run: the fresh directory, the Landlock ruleset
and its launcher, against the bare spawn; and the host-loop time of the argument check for
the worst argument lists a plugin can send.

    .venv/bin/python benchmarks/bench_exec.py [--runs N]

Runs ``true`` through :class:`ExecPolicy` with the lock-down off and on (state dir, scratch
dir and a plugin dir denied, as the runtime does), and times the ruleset build alone. Medians
over the runs; machines here are small and noisy, so read the relative sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from cordon.runtime._hostapi._exec import ExecPolicy
from cordon.runtime._hostapi._exec_landlock import abi_version, build_ruleset
from cordon.runtime._hostapi._exec_paths import ArgumentPaths, TooComplex

#: Argument lists a hostile plugin would send to make the host's argument check expensive.
WORST_ARGS = {
    "255 paths of existing components": ["/usr" + "/bin/.." * 20] * 255,
    "one argument of 100k '='": ["x" + "=" * 100_000],
    "typical (kubectl get pods -n x)": ["get", "pods", "--namespace=x", "--output=json"],
}


def _argument_check_ms(paths: ArgumentPaths, args: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        try:
            paths.problem(args)
        except TooComplex:
            pass
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


async def _median_run(policy: ExecPolicy, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        await policy.run(["true"])
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        scratch = state / "scratch" / "p"
        scratch.mkdir(parents=True)
        plugin_dir = Path(tmp) / "plugins" / "p"
        plugin_dir.mkdir(parents=True)
        common = {
            "scratch": scratch,
            "deny": [state, plugin_dir],
            "run_base": state / "exec",
            "path": "/usr/bin:/bin",
        }
        bare = ExecPolicy(lockdown="off", **common)  # type: ignore[arg-type]
        locked = ExecPolicy(lockdown="require", **common)  # type: ignore[arg-type]
        off = anyio.run(_median_run, bare, args.runs)
        on = anyio.run(_median_run, locked, args.runs)
        abi = abi_version()
        builds = []
        for _ in range(args.runs):
            t = time.perf_counter()
            fd = build_ruleset(abi=abi, deny=locked.denied, read_write=[tmp])
            builds.append(time.perf_counter() - t)
            os.close(fd)
    print(f"exec `true`, fresh dir, no lock-down : {off * 1e3:7.2f} ms median")
    print(f"exec `true`, fresh dir + Landlock    : {on * 1e3:7.2f} ms median")
    print(f"  of which the ruleset build         : {statistics.median(builds) * 1e3:7.2f} ms")
    print(f"lock-down overhead per run           : {(on - off) * 1e3:7.2f} ms")
    paths = ArgumentPaths(denied=locked.denied, run_base=locked.run_base)
    for what, worst in WORST_ARGS.items():
        ms = _argument_check_ms(paths, worst, args.runs)
        print(f"argument check, {what:33}: {ms:7.2f} ms (host loop)")


if __name__ == "__main__":
    main()
