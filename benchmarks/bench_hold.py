"""How long one hostile plugin can hold the host's loop, and what a bystander feels.

    .venv/bin/python benchmarks/bench_hold.py [--seconds S] [--rounds N]

Two runtimes in this one process, each with the hostile ``costly_frames`` test plugin and
the hello plugin, interleaved round by round:

* **before**: the hostile plugin's ``max-frame-values`` set out of reach and its decode budget
  unbounded (what the host did before either existed);
* **after**: the defaults.

In each round the hostile plugin floods for ``--seconds``, in turn: an answer of 15 MiB of
lists ten deep (the most costly shape per value measured), an answer just under the default
cap (decoded: the costliest frame the cap admits), and 50 unsolicited answers just under
it. Meanwhile hello takes one small call due every 2 ms. Printed per variant, as medians
over the rounds:

* the longest hold of the loop for the hostile worker's frames (thread CPU time of one read
  callback, one frame in the pump, or one stretch of a large answer's decode between
  checkpoints: the budget's own instrumentation), and the longest gap a 1 ms ticker saw
  (wall clock, everything included);
* the bystander's p50 / p99 / max latency, counted from when each call was *due*;
* the hostile worker's host CPU in all, and how often its reading was paused.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio

from cordon.protocol import FrameTooLarge
from cordon.runtime import Runtime
from cordon.runtime._supervise._decode_budget import DecodeBudget
from cordon.runtime._supervise._worker_reader import DEFAULT_MAX_FRAME_VALUES

ROOT = Path(__file__).resolve().parent.parent
COSTLY = ROOT / "tests" / "sandbox" / "hostile" / "costly_frames"
HELLO = ROOT / "examples" / "plugins" / "hello"
#: A bystander's pace: one small call due every 2 ms.
PACE: Final = 0.002
#: The ticker's period: the loop's gaps are what it sees beyond this.
TICK: Final = 0.001
#: Units of lists ten deep (21 bytes, 11 structural each): a 15 MiB answer.
BIG_UNITS: Final = 15 * 1024 * 1024 // 21
#: Units of an answer just under the default cap.
UNDER_UNITS: Final = (DEFAULT_MAX_FRAME_VALUES - 40) // 11


def _config(tmp: Path, before: bool) -> dict[str, Any]:
    costly: dict[str, Any] = {"memory": "1 GiB", "max-message": "64 MiB"}
    if before:
        costly["max-frame-values"] = 10**9
    return {
        "runtime": {"state-dir": str(tmp / "state"), "warm-workers": 0},
        "defaults": {"call-timeout": "120 s", "max-call-timeout": "600 s"},
        "plugins": {"costly_frames": costly},
    }


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _round(rt: Runtime, before: bool, seconds: float) -> dict[str, float]:
    costly, hello = rt.get("costly_frames"), rt.get("hello")
    await costly.start()
    await hello.call("echo", {"value": 0})
    worker = costly.worker
    assert worker is not None
    worker.decode_budget = DecodeBudget(share=1e9, burst=1e9) if before else DecodeBudget()
    lat: list[float] = []
    gaps = [0.0]

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await anyio.sleep(TICK)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last - TICK)
            last = now

    async def flood() -> None:
        # One after the other: the worker's own writes of an answer and the tool's raw
        # frames must not interleave on the channel.
        while True:
            try:
                await costly.call("answer", {"n": BIG_UNITS}, timeout=120)
            except FrameTooLarge:  # refused (after) as soon as counted, while the worker
                # still writes the rest: one more answer waits that out (channel order)
                await costly.call("answer", {"n": 1})
            await costly.call("answer", {"n": UNDER_UNITS}, timeout=120)  # decoded
            await costly.call("flood", {"frames": 50, "n": UNDER_UNITS}, timeout=120)

    async with anyio.create_task_group() as tg:
        tg.start_soon(flood)
        await anyio.sleep(0.2)  # the flood is under way
        tg.start_soon(ticker)
        start = time.perf_counter()
        for i in range(int(seconds / PACE)):
            due = start + i * PACE
            now = time.perf_counter()
            if now < due:
                await anyio.sleep(due - now)
            await hello.call("echo", {"value": i})
            lat.append(time.perf_counter() - due)
        tg.cancel_scope.cancel()
    budget = worker.decode_budget
    out = {
        "hold": budget.longest,
        "gap": gaps[0],
        "p50": _pct(lat, 0.5),
        "p99": _pct(lat, 0.99),
        "max": max(lat),
        "cpu": budget.charged,
        "paused": float(budget.paused),
    }
    await costly.stop()  # a fresh worker (and budget) each round
    return out


async def main(seconds: float, rounds: int) -> None:
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in results:
            (Path(tmp) / name).mkdir()
        async with (
            Runtime(_config(Path(tmp) / "before", True)) as rt_before,
            Runtime(_config(Path(tmp) / "after", False)) as rt_after,
        ):
            for rt in (rt_before, rt_after):
                await rt.load(COSTLY)
                await rt.load(HELLO)
            for r in range(rounds):
                for name, rt in (("before", rt_before), ("after", rt_after)):
                    res = await _round(rt, name == "before", seconds)
                    results[name].append(res)
                    print(
                        f"round {r + 1} {name:6s} "
                        + "  ".join(f"{k}={v:.4g}" for k, v in res.items())
                    )
    print()
    print(f"flood: 15 MiB answers of lists ten deep, answers of {UNDER_UNITS} units; {seconds} s")
    print("| | before (no cap, no budget) | after (defaults) |")
    print("|---|---|---|")
    rows = [
        ("longest loop hold for the hostile's frames (thread CPU)", "hold", 1e3, "ms"),
        ("longest gap a 1 ms ticker saw (wall)", "gap", 1e3, "ms"),
        ("bystander p50", "p50", 1e3, "ms"),
        ("bystander p99", "p99", 1e3, "ms"),
        ("bystander max", "max", 1e3, "ms"),
        ("host CPU for the hostile's frames", "cpu", 1.0, "s"),
        ("its reading paused", "paused", 1.0, "times"),
    ]
    for label, key, scale, unit in rows:
        cells = [statistics.median(r[key] for r in results[n]) * scale for n in results]
        print(f"| {label} | {cells[0]:.4g} {unit} | {cells[1]:.4g} {unit} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.seconds, args.rounds)
