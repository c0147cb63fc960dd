"""Plugin environments built by real ``uv`` from a local wheelhouse (no network):

- *build time* of the env for a lock of three small dependencies (each a pure-Python wheel of
  ``MODULES`` modules), with a cold uv cache (fresh cache dir: uv unpacks every wheel) and a
  warm one (same cache, fresh envs root: uv only hard-links);
- *lock time*: ``uv pip compile`` of the same three requirements against the wheelhouse;
- *disk* used by ``SHARING`` envs that each lock one shared dependency plus one of their own,
  counted per inode across all of them (hard links through the cache count once), against
  the sum of their individual sizes;
- *worker cold start* (``Runtime.load(ID)`` of an installed plugin, then its first call
  answered, no warm spare) under the strict sandbox, with its own environment (three
  dependencies, imported by the plugin) and without (the same plugin, no dependencies),
  interleaved round by round so both see the same machine.

Prints medians over ``ROUNDS`` rounds. The wheelhouse, caches and envs live in one temporary
directory (one filesystem, so uv hard-links).

    python benchmarks/bench_install.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/packages/wheelhouse

from cordon.runtime._packages._env import PluginEnv, env_for, env_size, envs_disk_usage
from cordon.runtime._packages._lock import (
    IndexOptions,
    Lock,
    current_platform,
    current_python,
    lock_requirements,
)
from tests.packages.wheelhouse import make_wheel

ROUNDS: Final = 5
#: Modules per dependency wheel: a small library (a few hundred KiB unpacked).
MODULES: Final = 40
#: Envs sharing one dependency, for the disk figure.
SHARING: Final = 20


def make_dep(wheelhouse: Path, name: str, version: str = "1.0") -> None:
    body = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(200))
    files = {f"{name}_pkg/m{i}.py": body.encode() for i in range(MODULES)}
    make_wheel(wheelhouse, name, version, extra_files=files)


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cordon-bench-install-") as tmp:
        root = Path(tmp)
        house = root / "wheelhouse"
        for name in ("benchdepa", "benchdepb", "benchdepc", "benchshared"):
            make_dep(house, name)
        for i in range(SHARING):
            make_dep(house, f"benchown{i}")
        options = IndexOptions(find_links=(str(house),), offline=True)

        lock_s: list[float] = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            lock = lock_requirements(["benchdepa", "benchdepb", "benchdepc"], options)
            lock_s.append(time.perf_counter() - t)

        cold: list[float] = []
        warm: list[float] = []
        for r in range(ROUNDS):
            cache = root / f"cache-{r}"
            t = time.perf_counter()
            env_for(lock, envs_root=root / f"cold-{r}", cache_dir=cache, options=options)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            env_for(lock, envs_root=root / f"warm-{r}", cache_dir=cache, options=options)
            warm.append(time.perf_counter() - t)
        reuse: list[float] = []
        for r in range(ROUNDS):
            t = time.perf_counter()
            env_for(
                lock, envs_root=root / f"warm-{r}", cache_dir=root / f"cache-{r}", options=options
            )
            reuse.append(time.perf_counter() - t)

        envs: list[PluginEnv] = []
        cache = root / "cache-sharing"
        for i in range(SHARING):
            own = lock_requirements(["benchshared", f"benchown{i}"], options)
            envs.append(env_for(own, envs_root=root / "sharing", cache_dir=cache, options=options))
        separate = sum(env_size(e) for e in envs)
        together = envs_disk_usage(envs)
        empty = Lock(python=current_python(), platform=current_platform())
        skeleton = env_size(
            env_for(empty, envs_root=root / "empty", cache_dir=cache, options=options)
        )

    print(f"lock, 3 deps (uv pip compile)        {median_ms(lock_s)}")
    print(f"env build, 3 deps, cold uv cache     {median_ms(cold)}")
    print(f"env build, 3 deps, warm uv cache     {median_ms(warm)}")
    print(f"env_for of an existing env (reuse)   {median_ms(reuse)}")
    print(f"{SHARING} envs sharing one dep: sum of sizes {separate / 1024:8.0f} KiB")
    print(f"{SHARING} envs sharing one dep: on disk      {together / 1024:8.0f} KiB")
    print(f"  ({together / separate:.2f} of the sum; per env {together / SHARING / 1024:.0f} KiB)")
    print(f"an env with no dependency (venv skeleton) {skeleton / 1024:5.0f} KiB")


#: Cold starts measured per variant (each a new worker: spawn, lock-down, import, call).
COLD_STARTS: Final = 15
#: A cold start finishes well within this on a loaded machine; past it the run is broken.
COLD_START_DEADLINE: Final = 60.0

_COLD_PLUGIN = """
{imports}
from cordon.worker import Plugin

plugin = Plugin()


@plugin.tool
def ping() -> str:
    return "pong"
"""


def _cold_plugin(root: Path, plugin_id: str, deps: list[str]) -> Path:
    folder = root / plugin_id
    folder.mkdir(parents=True)
    listed = ", ".join(f'"{d}"' for d in deps)
    (folder / "plugin.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "{plugin_id}"\nversion = "1.0.0"\n'
        f'entry = "{plugin_id}_main:plugin"\ndependencies = [{listed}]\n'
    )
    code = _COLD_PLUGIN.format(imports="\n".join(f"import {d}" for d in deps))
    (folder / f"{plugin_id}_main.py").write_text(code)
    return folder


def cold_start() -> None:
    """Median cold start of an installed plugin's worker, with and without its own env."""
    import anyio

    from cordon.runtime import Runtime
    from cordon.runtime._packages._install import commit, stage

    with tempfile.TemporaryDirectory(prefix="cordon-bench-coldstart-") as tmp:
        root = Path(tmp)
        house = root / "wheelhouse"
        deps = ["benchdepa", "benchdepb", "benchdepc"]
        for name in deps:
            make_dep(house, name)
        options = IndexOptions(find_links=(str(house),), offline=True)
        state = root / "state"
        for plugin_id, needs in (("withenv", deps), ("noenv", [])):
            _, staged = stage(
                str(_cold_plugin(root / "src", plugin_id, needs)),
                state_dir=state,
                trusted_keys=(),
                require_signatures=False,
                options=options,
            )
            commit(staged)
        config = {
            "runtime": {"state-dir": str(state), "warm-workers": 0},
            "defaults": {"sandbox": "strict"},
        }
        times: dict[str, list[float]] = {"withenv": [], "noenv": []}

        async def run() -> None:
            async with Runtime(config) as rt:
                for _ in range(COLD_STARTS):
                    for plugin_id, samples in times.items():
                        with anyio.fail_after(COLD_START_DEADLINE):
                            t = time.perf_counter()
                            handle = await rt.load(plugin_id)
                            assert await handle.call("ping", {}) == "pong"
                            samples.append(time.perf_counter() - t)
                            await rt.unload(plugin_id)

        anyio.run(run)
    print(f"worker cold start, strict, own env (3 deps) {median_ms(times['withenv'])}")
    print(f"worker cold start, strict, no env           {median_ms(times['noenv'])}")


if __name__ == "__main__":
    main()
    cold_start()
