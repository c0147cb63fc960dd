"""Storage writes per second and a bystander's wait during a storm, side by side in one run:

- *before*: the storage module as it was before group commit (``BEFORE``, read from git
  history when this is a git checkout): one transaction and one fsync per write, callers
  served first come, first served;
- *batch 1*: today's queue with one write per transaction (fair, but an fsync each);
- *group commit*: today's default, up to ``BATCH_MAX`` writes per transaction, one op per
  plugin per turn.

Every write is acknowledged only after its transaction committed (``synchronous=FULL``), in
every mode. Databases live under the current directory (a real disk, not tmpfs: fsync is
the cost). Prints medians over several rounds.

    python benchmarks/bench_storage.py
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel

from cordon.runtime._hostapi._storage import BATCH_MAX, Storage

#: The last commit with the one-transaction-per-write storage module.
BEFORE: Final = "4f46490"

#: Concurrent writers (plugins) and writes each, per round.
PLUGINS: Final = 4
WRITES: Final = 250
ROUNDS: Final = 5
#: The storm a bystander competes with (writes fired at once by one plugin).
STORM: Final = 2000


async def writes_per_second(path: Path, opener: Any) -> float:
    store = await opener(path)
    try:

        async def writer(pid: str) -> None:
            for i in range(WRITES):
                await store.set(pid, f"k{i}", i)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for p in range(PLUGINS):
                # Each plugin has many writes in flight, as its worker's requests would.
                for _lane in range(8):
                    tg.start_soon(writer, f"p{p}")
        return PLUGINS * 8 * WRITES / (time.perf_counter() - t0)
    finally:
        await store.close()


async def bystander_wait(path: Path, opener: Any) -> float:
    store = await opener(path)
    try:
        waited = 0.0
        async with anyio.create_task_group() as tg:
            for i in range(STORM):
                tg.start_soon(store.set, "storm", f"k{i}", i)
            await anyio.lowlevel.checkpoint()  # the storm is queued first
            t0 = time.perf_counter()
            await store.set("bystander", "k", 1)
            waited = time.perf_counter() - t0
        return waited
    finally:
        await store.close()


def old_storage() -> Any | None:
    """``Storage`` as of :data:`BEFORE`, or ``None`` outside a git checkout."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:runtime/_storage.py"],
            capture_output=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("_storage_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{BEFORE}:runtime/_storage.py", "exec"), module.__dict__)
    return module.Storage


async def main() -> None:
    modes: list[tuple[str, Any]] = []
    before = old_storage()
    if before is not None:
        modes.append((f"before ({BEFORE})", lambda p: before.open(p, default_quota=1 << 30)))
    modes.append(("batch 1", lambda p: Storage.open(p, batch_max=1, default_quota=1 << 30)))
    modes.append((f"group commit ({BATCH_MAX})", lambda p: Storage.open(p, default_quota=1 << 30)))
    rows = []
    for label, opener in modes:
        rates, waits = [], []
        for r in range(ROUNDS):
            with tempfile.TemporaryDirectory(dir=".") as d:
                rates.append(await writes_per_second(Path(d) / f"w{r}.db", opener))
            with tempfile.TemporaryDirectory(dir=".") as d:
                waits.append(await bystander_wait(Path(d) / f"b{r}.db", opener))
        rows.append((label, statistics.median(rates), statistics.median(waits)))
    print(f"{PLUGINS} plugins x 8 lanes x {WRITES} writes; bystander behind a {STORM}-write storm")
    print(f"{'mode':<24} {'writes/s':>10} {'bystander ms':>13}")
    for label, rate, wait in rows:
        print(f"{label:<24} {rate:>10.0f} {wait * 1000:>13.1f}")


if __name__ == "__main__":
    anyio.run(main)
