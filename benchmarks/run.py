"""cordon's benchmarks, from one run, side by side.

    python3 .ci/dev.py bench            # or: .venv/bin/python benchmarks/run.py [--quick]

Prints: a raw Python pipe ping-pong (the floor any stdio RPC sits on), sequential and
64-in-flight echo calls through the full stack (Runtime → worker → plugin → back), worker cold
start (spawn → ready) and idle worker memory. Medians over repeated rounds; these machines are
2 cores and noisy, so compare ratios from the same run rather than absolute numbers.

Sequential figures are also given by placement. A ping-pong's speed depends above all on
whether its two processes share a CPU: on one, a hand-off is a context switch; on two, the
sleeping CPU must be woken (~35 us on these VMs). The scheduler puts the bare floor's pair on
one CPU in some rounds and on two in others, and cordon's busier pair almost always on two,
so an unpinned ratio can compare unlike with like. Each placement is therefore also measured
pinned, for the floor and the stack alike: "two CPUs" (host and child each on its own) and
"one CPU" (both on the same).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import psutil

from cordon.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "plugins" / "hello"

_PONG = textwrap.dedent(
    """
    import os
    r, w = 0, 1
    buf = b""
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        buf += data
        while b"\\n" in buf:
            line, buf = buf.split(b"\\n", 1)
            os.write(w, line + b"\\n")
    """
)


#: Placements measured pinned: (this process's CPU, the child's CPU).
PLACEMENTS: dict[str, tuple[int, int]] = {"two CPUs": (0, 1), "one CPU": (0, 0)}


class _Pinned:
    """Pin this thread (the event loop's) and a child process to CPUs, then restore both."""

    def __init__(self, child_pid: int, cpus: tuple[int, int] | None) -> None:
        self.child_pid, self.cpus = child_pid, cpus
        self.mine = os.sched_getaffinity(0)
        self.theirs = os.sched_getaffinity(child_pid)

    def __enter__(self) -> None:
        if self.cpus is not None:
            os.sched_setaffinity(0, {self.cpus[0]})
            os.sched_setaffinity(self.child_pid, {self.cpus[1]})

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self.mine)
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(self.child_pid, self.theirs)


def raw_pipe_floor(n: int, cpus: tuple[int, int] | None = None) -> float:
    """Sequential ping-pong of one small JSON line over a pipe to a bare Python child."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _PONG], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    w, r = proc.stdin.fileno(), proc.stdout.fileno()
    msg = b'{"jsonrpc":"2.0","id":1,"method":"invoke","params":{"name":"echo"}}\n'
    with _Pinned(proc.pid, cpus):
        rate = _ping_pong(n, w, r, msg)
    proc.stdin.close()
    proc.wait()
    proc.stdout.close()
    return rate


def _ping_pong(n: int, w: int, r: int, msg: bytes) -> float:
    os.write(w, msg)  # the child is up and this path is warm before the clock starts
    got = b""
    while not got.endswith(b"\n"):
        got += os.read(r, 65536)
    start = time.perf_counter()
    for _ in range(n):
        os.write(w, msg)
        got = b""
        while not got.endswith(b"\n"):
            got += os.read(r, 65536)
    return n / (time.perf_counter() - start)


async def sequential(rt: Runtime, n: int) -> tuple[float, list[float]]:
    hello = rt.get("hello")
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await hello.call("echo", {"value": i})
        lat.append(time.perf_counter() - t0)
    return n / (time.perf_counter() - start), lat


async def pipelined(rt: Runtime, n: int, width: int = 64) -> tuple[float, list[float]]:
    hello = rt.get("hello")
    lat: list[float] = []
    per_task = n // width

    async def lane() -> None:
        for i in range(per_task):
            t0 = time.perf_counter()
            await hello.call("echo", {"value": i})
            lat.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(width):
            tg.start_soon(lane)
    return per_task * width / (time.perf_counter() - start), lat


async def cold_starts(rt: Runtime, rounds: int, *, warm: bool = False) -> list[float]:
    """Stop → first call answered. ``warm``: each start claims a waiting spare (waited for
    outside the timing), so this is what a lazy first use or a restart costs with one."""
    hello = rt.get("hello")
    times = []
    for _ in range(rounds):
        await hello.stop()
        if warm and not rt._spares:
            await rt._spare_added.wait()
        t0 = time.perf_counter()
        await hello.call("echo", {"value": 0})
        times.append(time.perf_counter() - t0)
    return times


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n_seq = 2000 if args.quick else 10000
    n_pipe = 12800 if args.quick else 64000
    rounds = 3 if args.quick else 5
    out: dict[str, Any] = {}
    floors = [raw_pipe_floor(n_seq) for _ in range(rounds)]
    out["raw_pipe_floor"] = statistics.median(floors)
    with tempfile.TemporaryDirectory() as state:
        # No spare while measuring throughput: its start would land in the first rounds.
        config: dict[str, Any] = {
            "runtime": {"state-dir": state, "warm-workers": 0},
            "defaults": {"sandbox": args.sandbox},
        }
        async with Runtime(config) as rt:
            await rt.load(HELLO)
            await rt.get("hello").call("echo", {"value": 0})  # start + warm up
            worker = rt.get("hello").worker
            assert worker is not None and worker.pid is not None
            wproc = psutil.Process(worker.pid)
            cpu0 = time.process_time(), sum(wproc.cpu_times()[:2])
            seq = [await sequential(rt, n_seq) for _ in range(rounds)]
            cpu1 = time.process_time(), sum(wproc.cpu_times()[:2])
            pipe = [await pipelined(rt, n_pipe) for _ in range(rounds)]
            cpu2 = time.process_time(), sum(wproc.cpu_times()[:2])
            out["placed"] = {}
            if len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0):
                for name, cpus in PLACEMENTS.items():
                    floors_p, stack_p = [], []
                    for _ in range(rounds):  # interleaved, so drift hits both alike
                        floors_p.append(raw_pipe_floor(n_seq // 2, cpus))
                        with _Pinned(worker.pid, cpus):
                            stack_p.append((await sequential(rt, n_seq // 2))[0])
                    out["placed"][name] = (statistics.median(floors_p), statistics.median(stack_p))
            # CPU seconds per call on each side (coarse: the kernel counts in ticks).
            out["seq_cpu"] = [(b - a) / (n_seq * rounds) for a, b in zip(cpu0, cpu1, strict=True)]
            n_p = (n_pipe // 64) * 64 * rounds
            out["pipe_cpu"] = [(b - a) / n_p for a, b in zip(cpu1, cpu2, strict=True)]
            mem = psutil.Process(worker.pid).memory_full_info()
            out["idle_rss"] = mem.rss
            out["idle_uss"] = mem.uss
            out["sandbox"] = rt.get("hello").sandbox
            starts = await cold_starts(rt, 10 if args.quick else 20)
        config["runtime"]["warm-workers"] = 1
        async with Runtime(config) as rt:
            await rt.load(HELLO)
            await rt.get("hello").call("echo", {"value": 0})  # the first start makes a spare
            warm_starts = await cold_starts(rt, 10 if args.quick else 20, warm=True)
    out["seq_rate"] = statistics.median(r for r, _ in seq)
    seq_lat = [x for _, lat in seq for x in lat]
    out["seq_p50"], out["seq_p99"] = _pct(seq_lat, 0.5), _pct(seq_lat, 0.99)
    out["pipe_rate"] = statistics.median(r for r, _ in pipe)
    pipe_lat = [x for _, lat in pipe for x in lat]
    out["pipe_p50"], out["pipe_p99"] = _pct(pipe_lat, 0.5), _pct(pipe_lat, 0.99)
    out["cold_start_median"] = statistics.median(starts)
    out["warm_start_median"] = statistics.median(warm_starts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument(
        "--sandbox", default="best-effort", choices=["strict", "best-effort", "off"]
    )
    args = parser.parse_args()
    r = anyio.run(main_async, args)
    floor = r["raw_pipe_floor"]
    print(
        f"cordon benchmarks  (python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
        f"sandbox={args.sandbox})"
    )
    print(f"  raw pipe ping-pong floor      {floor:10.0f} msgs/s")
    print(
        f"  full stack, sequential        {r['seq_rate']:10.0f} calls/s   "
        f"({r['seq_rate'] / floor:.2f}x floor)  p50 {_ms(r['seq_p50'])}  "
        f"p99 {_ms(r['seq_p99'])}"
    )
    print(
        f"  full stack, 64 in flight      {r['pipe_rate']:10.0f} calls/s   "
        f"({r['pipe_rate'] / floor:.2f}x floor)  p50 {_ms(r['pipe_p50'])}  "
        f"p99 {_ms(r['pipe_p99'])}"
    )
    for label, key in (("sequential", "seq_cpu"), ("64 in flight", "pipe_cpu")):
        host_cpu, worker_cpu = r[key]
        print(
            f"  cpu per call, {label:13s}  host {host_cpu * 1e6:6.1f} us, "
            f"worker {worker_cpu * 1e6:6.1f} us"
        )
    print(
        f"  worker cold start (spawn → ready, incl. lock-down)  median "
        f"{_ms(r['cold_start_median'])}"
    )
    print(
        f"  worker start from a warm spare (claim → ready)       median "
        f"{_ms(r['warm_start_median'])}"
    )
    print(
        f"  idle worker memory            RSS {r['idle_rss'] / 2**20:.1f} MiB, "
        f"USS {r['idle_uss'] / 2**20:.1f} MiB"
    )
    if r["placed"]:
        print("  sequential by placement        floor msgs/s   stack calls/s")
        unpinned = ("as scheduled (unpinned)", (floor, r["seq_rate"]))
        for name, (f, s) in [unpinned, *r["placed"].items()]:
            print(f"    {name:26s} {f:10.0f}      {s:10.0f}     ({s / f:.2f}x floor)")
    else:
        print("  sequential by placement        not measured: needs CPUs 0 and 1")
    applied = sorted(k for k, v in r["sandbox"].items() if v == "applied")
    print(f"  sandbox layers applied        {', '.join(applied) or 'none'}")


if __name__ == "__main__":
    main()
