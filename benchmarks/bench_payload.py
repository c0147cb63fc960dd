"""Large payloads and the hot path, side by side with raw pipes, in one run.

    .venv/bin/python benchmarks/bench_payload.py [--quick] [--sandbox strict]

Prints, each as a median with its ratio to the raw figure measured in the same run:

* 1 MiB and 64 KiB echo through a real worker (Runtime → worker → plugin → back) against a
  raw ``os.read``/``os.write`` echo of the same size between two processes; the raw echo
  with the default pipe buffer (64 KiB) and with ``F_SETPIPE_SZ`` at the system maximum.
* Sequential small calls against the small-message pipe floor, and 64 calls in flight.
* Each of those with the loop shortcuts on and off (``CORDON_LOOP_SHORTCUTS=0``), two
  runtimes in this one process, interleaved round by round.
* A bystander: one plugin's small calls (one due every 2 ms, latency counted from when it
  was due), alone and while another plugin streams large results (a 6 MB string, then 6 MB
  of small objects).

Echoes and sequential calls run with host and child pinned each to its own CPU (CPUs 0 and
1), raw pairs and cordon's alike; 64 in flight and the bystander run as scheduled.

Each echo's CPU is also counted, the host's loop thread and the other process (the raw
child, the worker; nanoseconds from ``/proc/<pid>/schedstat``), and compared as a ratio of
totals: a ping-pong's wall time is about its CPU plus two wake-ups, and unlike the wall time
other sessions on the machine hardly move it. ``--echo`` runs the echoes alone.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel
import msgspec
from run import HELLO, _Pinned, pipelined, raw_pipe_floor, sequential

from cordon.protocol import encode_result
from cordon.runtime import Runtime
from cordon.runtime._supervise import _worker_reader

#: Linux's fcntl number (Python 3.11's fcntl module lacks the name; 3.10 added it on some
#: builds only).
F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: A bystander's pace: one small call due every 2 ms.
PACE: Final = 0.002
#: The raw echo's reads: the whole pipe, as a well-tuned raw peer would read.
RAW_READ: Final = 1024 * 1024

_ECHO = textwrap.dedent(
    """
    import os, sys
    size = int(sys.argv[1])
    while True:
        buf = bytearray()
        while not buf.endswith(b"\\n"):
            data = os.read(0, size)
            if not data:
                raise SystemExit
            buf += data
        view = memoryview(buf)
        while view:
            view = view[os.write(1, view):]
    """
)

_BIG_PLUGIN_TOML = """\
[plugin]
id = "big"
name = "Big"
version = "1.0.0"
description = "Large results for the payload benchmark."
entry = "big_plugin:plugin"
requires-cordon = ">=0.1"

[contributes]
tools = [{ name = "blob", description = "A large result." }]
"""

_BIG_PLUGIN_PY = """\
from cordon.worker import Plugin

plugin = Plugin()
_CACHE = {}


@plugin.tool()
async def blob(size: int, kind: str = "str"):
    key = (size, kind)
    if key not in _CACHE:
        if kind == "str":
            _CACHE[key] = "x" * size
        else:
            _CACHE[key] = [{"i": i, "s": "yy"} for i in range(size // 20)]
    return _CACHE[key]
"""


def _write_big_plugin(tmp: Path) -> Path:
    big_dir = tmp / "big"
    big_dir.mkdir()
    (big_dir / "plugin.toml").write_text(_BIG_PLUGIN_TOML)
    (big_dir / "big_plugin.py").write_text(_BIG_PLUGIN_PY)
    return big_dir


def _pipe_max() -> int:
    return int(Path("/proc/sys/fs/pipe-max-size").read_text())


def _cpu_of(pid: int) -> float:
    """Seconds a process (all its threads) has run on a CPU: ``/proc/<pid>/schedstat``
    counts nanoseconds (``/proc/<pid>/stat`` ticks are 10 ms, too coarse for one call)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def raw_echo(size: int, n: int, big_pipes: bool, cpus: tuple[int, int] | None) -> float:
    """Median seconds per round trip of a ``size``-byte line through a bare child."""
    return raw_echo_cpu(size, n, big_pipes, cpus)[0]


def raw_echo_cpu(
    size: int, n: int, big_pipes: bool, cpus: tuple[int, int] | None
) -> tuple[float, float, float]:
    """:func:`raw_echo`, and the CPU per round trip of this thread and of the child."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _ECHO, str(RAW_READ)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    w, r = proc.stdin.fileno(), proc.stdout.fileno()
    if big_pipes:
        for fd in (w, r):
            fcntl.fcntl(fd, F_SETPIPE_SZ, _pipe_max())
    msg = b"x" * (size - 1) + b"\n"
    times = []
    try:
        with _Pinned(proc.pid, cpus):
            for i in range(n + 1):
                if i == 1:  # the first trip warms the child
                    mine, theirs = time.thread_time(), _cpu_of(proc.pid)
                t0 = time.perf_counter()
                os.write(w, msg)  # blocking: the child reads as it goes
                got = 0
                while got < size:
                    got += len(os.read(r, RAW_READ))
                if i:
                    times.append(time.perf_counter() - t0)
            mine, theirs = time.thread_time() - mine, _cpu_of(proc.pid) - theirs
    finally:
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
    return statistics.median(times), mine / n, theirs / n


async def stack_echo(rt: Runtime, size: int, n: int) -> float:
    return (await stack_echo_cpu(rt, size, n))[0]


async def stack_echo_cpu(rt: Runtime, size: int, n: int) -> tuple[float, float, float]:
    """Median seconds per echo through cordon, and the CPU per echo of the host's loop
    thread (all of the host's work on this path) and of the worker."""
    hello = rt.get("hello")
    value = "x" * (size - 40)  # the envelope makes up the rest
    times = []
    pid = _worker_pid(rt)
    mine, theirs = time.thread_time(), _cpu_of(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        out = await hello.call("echo", {"value": value})
        times.append(time.perf_counter() - t0)
        assert len(out) == len(value)
    mine, theirs = time.thread_time() - mine, _cpu_of(pid) - theirs
    return statistics.median(times), mine / n, theirs / n


@contextmanager
def shortcuts(on: bool) -> Iterator[None]:
    """The environment a runtime's workers (and its own reader) choose their path from."""
    old = os.environ.pop("CORDON_LOOP_SHORTCUTS", None)
    if not on:
        os.environ["CORDON_LOOP_SHORTCUTS"] = "0"
    try:
        yield
    finally:
        os.environ.pop("CORDON_LOOP_SHORTCUTS", None)
        if old is not None:
            os.environ["CORDON_LOOP_SHORTCUTS"] = old


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bystander(
    rt: Runtime, seconds: float, big: tuple[int, str] | None
) -> tuple[float, float, float, int]:
    """The hello plugin's small calls, one due every :data:`PACE` seconds, while ``big``
    plugin calls stream results of that (size, kind) in a loop: p50, p99 and max latency,
    counted from when each call was *due* (a call held up delays the next ones too, and
    that counts: no coordinated omission), and how many big results arrived."""
    lat: list[float] = []
    big_done = 0
    hello = rt.get("hello")

    async def streamer() -> None:
        nonlocal big_done
        assert big is not None
        while True:
            await rt.get("big").call("blob", {"size": big[0], "kind": big[1]}, timeout=60)
            big_done += 1

    async with anyio.create_task_group() as tg:
        if big is not None:
            tg.start_soon(streamer)
            await anyio.sleep(0.2)  # the stream is under way
        start = time.perf_counter()
        for i in range(int(seconds / PACE)):
            due = start + i * PACE
            now = time.perf_counter()
            if now < due:
                await anyio.sleep(due - now)
            await hello.call("echo", {"value": i})
            lat.append(time.perf_counter() - due)
        tg.cancel_scope.cancel()
    return _pct(lat, 0.5), _pct(lat, 0.99), max(lat), big_done


@contextmanager
def _whole_in_reader() -> Iterator[None]:
    old = _worker_reader.LARGE_FRAME
    _worker_reader.LARGE_FRAME = 1 << 40  # type: ignore[misc]
    try:
        yield
    finally:
        _worker_reader.LARGE_FRAME = old  # type: ignore[misc]


#: Large answers whose decoding the host's loop must not be held by.
HOLD_BODIES: Final[dict[str, Callable[[], Any]]] = {
    "300k small objects": lambda: [{"i": i, "s": "yy"} for i in range(300_000)],
    "1000 6 KiB documents": lambda: [{"id": i, "text": "lorem ipsum " * 500} for i in range(1000)],
    "one 6 MB string": lambda: "x" * 6_000_000,
    "3M tiny ints": lambda: [1] * 3_000_000,
}


async def loop_holds(rounds: int) -> dict[str, tuple[float, float, float]]:
    """For each body: the longest stretch of the loop's thread CPU time between two
    checkpoints while one answer is decoded in pieces, the same decoded whole, and the
    pieces' total CPU time (medians over ``rounds``). CPU time of this thread, so other
    processes on the machine do not count."""
    out: dict[str, tuple[float, float, float]] = {}
    for name, make in HOLD_BODIES.items():
        frame = encode_result(1, make()).rstrip(b"\n")
        longest, whole, total = [], [], []
        for _ in range(rounds):
            gaps: list[float] = []
            last = [time.thread_time()]

            async def checkpoint(gaps: list[float] = gaps, last: list[float] = last) -> None:
                now = time.thread_time()
                gaps.append(now - last[0])
                await anyio.lowlevel.checkpoint()
                last[0] = time.thread_time()

            t0 = time.thread_time()
            value = await _worker_reader.decode_large(frame, checkpoint)
            end = time.thread_time()
            gaps.append(end - last[0])
            total.append(end - t0)
            longest.append(max(gaps))
            del value
            t0 = time.thread_time()
            value = msgspec.json.decode(frame)
            whole.append(time.thread_time() - t0)
            del value
        med = statistics.median
        out[name] = (med(longest), med(whole), med(total))
    return out


def _worker_pid(rt: Runtime) -> int:
    worker = rt.get("hello").worker
    assert worker is not None and worker.pid is not None
    return worker.pid


def _config(state: str, sandbox: str) -> dict[str, Any]:
    return {
        "runtime": {"state-dir": state, "warm-workers": 0},
        "defaults": {"sandbox": sandbox, "memory": "1GiB"},
        # 6 MB of small objects is ~1.2M JSON values: past the default max-frame-values
        # (what one frame may hold the loop), raised for the plugin that streams it.
        "plugins": {"big": {"max-frame-values": 2_000_000}},
    }


def _print_echoes(
    args: argparse.Namespace,
    raw: dict[str, list[float]],
    res: dict[str, dict[str, list[float]]],
    cpu: dict[str, list[tuple[float, float]]],
) -> None:
    med = statistics.median
    print(
        f"payload benchmarks  (python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
        f"sandbox={args.sandbox}, pipe max {_pipe_max()} bytes)"
    )
    print("  echo, median per round trip    raw      raw+big pipes   cordon (shortcuts on / off)")
    for label in ("1 MiB", "64 KiB"):
        r0, r1 = med(raw[f"{label} raw"]), med(raw[f"{label} raw big pipes"])
        on, off = med(res["on"][label]), med(res["off"][label])
        print(
            f"    {label:7s} {r0 * 1e3:8.3f} ms  {r1 * 1e3:8.3f} ms   "
            f"{on * 1e3:8.3f} ms ({r0 / on:.2f}x raw, {r1 / on:.2f}x big) / "
            f"{off * 1e3:8.3f} ms ({r0 / off:.2f}x raw)"
        )
    print("  CPU per echo (what the load moves least), host's thread + the other process:")
    for label in ("1 MiB", "64 KiB"):
        base = cpu[f"{label} raw big pipes"]
        b_mine, b_theirs = med(c[0] for c in base), med(c[1] for c in base)
        line = f"    {label:7s} raw+big {b_mine * 1e3:.3f} + {b_theirs * 1e3:.3f} ms"
        for mode in ("on", "off"):
            ours = cpu[f"{label} {mode}"]
            mine, theirs = med(c[0] for c in ours), med(c[1] for c in ours)
            ratio = (b_mine + b_theirs) / (mine + theirs)
            line += f";  {mode}: {mine * 1e3:.3f} + {theirs * 1e3:.3f} ms ({ratio:.2f}x)"
        print(line)


async def main_async(args: argparse.Namespace) -> None:
    rounds = 3 if args.quick else 7
    n_big = 10 if args.quick else 30
    n_seq = 1000 if args.quick else 4000
    n_pipe = 6400 if args.quick else 32000
    res: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    raw: dict[str, list[float]] = {}
    #: CPU per echo, (this thread, the other process), each round.
    cpu: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        big_dir = _write_big_plugin(Path(tmp))
        rts: dict[str, Runtime] = {}
        async with AsyncExitStack() as stack:
            for mode in ("on", "off"):
                with shortcuts(mode == "on"):
                    rt = await stack.enter_async_context(
                        Runtime(_config(str(Path(tmp, mode)), args.sandbox))
                    )
                    rts[mode] = rt
                    await rt.load(HELLO)
                    await rt.load(big_dir)
                    await rt.get("hello").call("echo", {"value": 0})
                    await rt.get("big").call("blob", {"size": 10})
            # Host and child each on its own CPU, for the raw pairs and cordon's alike (see
            # run.py: whether a pair shares a CPU decides a ping-pong's speed).
            cpus = (0, 1) if {0, 1} <= os.sched_getaffinity(0) else None
            for _ in range(rounds):  # interleaved, so drift hits every column alike
                for label, size in (("1 MiB", 1 << 20), ("64 KiB", 64 << 10)):
                    for big in (False, True):
                        key = f"{label} raw" + (" big pipes" if big else "")
                        t, mine, theirs = raw_echo_cpu(size, n_big, big, cpus)
                        raw.setdefault(key, []).append(t)
                        cpu.setdefault(key, []).append((mine, theirs))
                    for mode, rt in rts.items():
                        with _Pinned(_worker_pid(rt), cpus):
                            t, mine, theirs = await stack_echo_cpu(rt, size, n_big)
                        res[mode].setdefault(label, []).append(t)
                        cpu.setdefault(f"{label} {mode}", []).append((mine, theirs))
                if args.echo:
                    continue
                raw.setdefault("floor", []).append(raw_pipe_floor(n_seq, cpus))
                for mode, rt in rts.items():
                    with _Pinned(_worker_pid(rt), cpus):
                        seq = (await sequential(rt, n_seq))[0]
                    res[mode].setdefault("seq", []).append(seq)
                    res[mode].setdefault("64", []).append((await pipelined(rt, n_pipe))[0])
            stand: dict[str, tuple[float, float, float, int]] = {}
            if args.echo:
                _print_echoes(args, raw, res, cpu)
                return
            rt = rts["on"]
            secs = 1.0 if args.quick else 3.0
            stand["alone"] = await bystander(rt, secs, None)
            stand["6 MB string"] = await bystander(rt, secs, (6_000_000, "str"))
            stand["6 MB objects"] = await bystander(rt, secs, (6_000_000, "objects"))
            # The same, every answer decoded whole in the reader as it arrives (how it was
            # before large answers went to their callers, in pieces).
            with _whole_in_reader():
                stand["6 MB objects, whole in reader"] = await bystander(
                    rt, secs, (6_000_000, "objects")
                )
    holds = await loop_holds(3 if args.quick else 7)
    med = statistics.median
    _print_echoes(args, raw, res, cpu)
    floor = med(raw["floor"])
    print(f"  small-message pipe floor       {floor:10.0f} msgs/s   (each pinned to two CPUs)")
    for key, label in (("seq", "sequential"), ("64", "64 in flight")):
        on, off = med(res["on"][key]), med(res["off"][key])
        print(
            f"  {label:14s} shortcuts on {on:8.0f} calls/s ({on / floor:.2f}x floor), "
            f"off {off:8.0f} ({off / floor:.2f}x), on/off {on / off:.2f}"
        )
    print("  a bystander's small calls, one due every 2 ms, latency from due time:")
    print("    while another plugin streams          p50        p99        max    big results")
    for name, (p50, p99, worst, done) in stand.items():
        print(
            f"    {name:32s} {p50 * 1e3:7.2f} ms  {p99 * 1e3:7.2f} ms  {worst * 1e3:7.2f} ms"
            f"   {done}"
        )
    print("  the host's loop decoding one large answer (its thread's CPU time):")
    print("    answer                    longest hold, pieces   whole   pieces in all")
    for name, (longest, whole, total) in holds.items():
        print(
            f"    {name:24s} {longest * 1e3:12.1f} ms  {whole * 1e3:9.1f} ms  {total * 1e3:9.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--echo", action="store_true", help="the echoes alone")
    parser.add_argument(
        "--sandbox", default="best-effort", choices=["strict", "best-effort", "off"]
    )
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
