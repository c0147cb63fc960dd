"""A forked worker's plugin import, contributions and first call, step by step.

    .venv/bin/python benchmarks/bench_plugin_import.py [--forks 40] [--plugin DIR]
        [--per-tool] [--tracemalloc]

This process is made a zygote as ``cordon.worker._zygote.serve`` makes one (the worker's
modules imported, the sandbox's and the launch's warm-up, the pools' holes filled, the heap
frozen), then forks ``--forks`` children one after the other, each of which does what a
worker does after its lock-down, without the lock-down (the kernel layers are timed by
``bench_launch.py --phases``; none of them changes what the import costs):

* ``capture logging``: ``_launch.capture_logging`` (the root logger's handler);
* ``import``: ``_launch.import_plugin``: the plugin's entry module imported, its tools
  registered as it runs;
* ``report ready``: ``_launch.report_ready``: ``InitializeResult`` made, encoded, written;
* ``first call``: one ``greet`` (or the first tool) decoded and run, its answer encoded.

Each step is measured in the child by its own CPU time (``time.thread_time``, which the
machine's load does not move), its minor page faults (``/proc/self/stat``: in a fork, nearly
all of them copies of the zygote's pages) and its USS growth (``/proc/self/smaps_rollup``
Private_*). Medians over the forks. ``--per-tool`` registers each of the plugin's tools
alone in a fresh fork instead (what one tool costs). ``--tracemalloc`` runs one child with
tracemalloc on and prints the top allocation sites of the import (the allocations, not the
copy-on-write faults: tracemalloc's own bookkeeping spoils the page counts).

Instruction counts, which a loaded machine does not move at all: run it under
``valgrind --tool=callgrind --dump-before=fork --callgrind-out-file=cg.%p`` with ``--forks 3``;
the parent's counters are dumped and zeroed at each fork, so each child's file (``cg.<pid>``
without a part suffix) holds that child's own instructions only.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import itertools
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "plugins" / "hello"

from cordon.protocol import (  # noqa: E402
    InitializeParams,
    InvokeParams,
    Limits,
    SandboxPolicy,
    encode_result,
)
from cordon.worker import _launch, _plugin, _zygote  # noqa: E402
from cordon.worker._entry import import_entry_module  # noqa: E402
from cordon.worker._sandbox import _audit, _lockdown  # noqa: E402


def _read(path: str) -> bytes:
    # os-level reads: the io module's objects would be touched (copied) by the marks, and
    # then not by the steps that use them first in a real worker.
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _minflt() -> int:
    # Field 10 (minflt), counted after the ")" that ends the command name.
    return int(_read("/proc/self/stat").rsplit(b")", 1)[1].split()[7])


def _uss() -> int:
    total = 0
    for line in _read("/proc/self/smaps_rollup").splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            total += int(line.split()[1])
    return total * 1024


def _mark() -> tuple[int, int, int, int, int]:
    """(faults, CPU ns, USS bytes) as the step before ends, then (faults, CPU ns) once
    they are read: reading smaps_rollup walks every mapping (~0.1 ms) and allocates, which
    no step is charged for."""
    cpu = time.thread_time_ns()
    faults = _minflt()
    uss = _uss()
    return (faults, cpu, uss, _minflt(), time.thread_time_ns())


def _step(a: list[int], b: list[int]) -> tuple[float, int, float]:
    """CPU ms, faults and USS KiB from mark ``a`` to mark ``b``."""
    return ((b[1] - a[4]) / 1e6, b[0] - a[3], (b[2] - a[2]) / 1024)


@functools.cache
def _entry(plugin_dir: Path) -> str:
    """The manifest's entry, read in this process before any fork (reading it in a child
    would import tomllib there, and warm the import machinery the plugin's import uses)."""
    import tomllib

    with open(plugin_dir / "plugin.toml", "rb") as f:
        entry: str = tomllib.load(f)["plugin"]["entry"]
    return entry


def _child_steps(plugin_dir: Path, wfd: int) -> None:
    """The launch's own steps from lock-down on (``_launch.capture_logging``,
    ``import_plugin``, ``report_ready``), then a first call as the server decodes and runs
    it. With ``--audit``, the lock-down's audit hook is installed first (it sees every
    audited event of the import)."""
    if _AUDIT:
        _audit.install()
    _unread, out_w = os.pipe()  # the channel: never read, the answers are small
    st = _launch.Launch(rfd=-1, wfd=out_w)
    st.init = InitializeParams(
        protocol=1,
        plugin_id="bench",
        plugin_dir=str(plugin_dir),
        entry=_entry(plugin_dir),
        scratch_dir=str(plugin_dir),
        limits=Limits(),
        sandbox=SandboxPolicy(mode="off"),
    )
    st.init_id = 1
    marks = [_mark()]
    _launch.capture_logging(st)
    marks.append(_mark())
    _launch.import_plugin(st)
    marks.append(_mark())
    _launch.report_ready(st)
    marks.append(_mark())
    plugin = st.plugin
    kind, name = next(iter(plugin.handlers))
    handler = plugin.handlers[(kind, name)]
    raw = msgspec.json.encode({"name": "x"}) if name == "greet" else b"{}"
    params = InvokeParams(kind=kind, name=name, arguments=msgspec.Raw(raw))
    args = handler.decode_arguments(params.arguments)
    coro = handler.fn(None, **args) if handler.wants_ctx else handler.fn(**args)
    try:
        coro.send(None)
    except StopIteration as done:
        encode_result(2, done.value)
    marks.append(_mark())
    os.write(wfd, json.dumps({"marks": marks}).encode())


def _child_tool(plugin_dir: Path, wfd: int) -> None:
    """Import the plugin, each tool's registration measured around ``_build_handler``."""
    costs: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    build = _plugin._build_handler

    def timed(*args: Any, **kwargs: Any) -> Any:
        before = _mark()
        handler = build(*args, **kwargs)
        costs.append((handler.name, before, _mark()))
        return handler

    _plugin._build_handler = timed
    module_name, _, _attr = _entry(plugin_dir).partition(":")
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(plugin_dir))
    import_entry_module(module_name, str(plugin_dir))
    os.write(wfd, json.dumps({"tools": costs}).encode())


def _child_tracemalloc(plugin_dir: Path, wfd: int) -> None:
    module_name, _, attr = _entry(plugin_dir).partition(":")
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(plugin_dir))
    tracemalloc.start(8)
    plugin = getattr(import_entry_module(module_name, str(plugin_dir)), attr or "plugin")
    after_import = tracemalloc.take_snapshot()
    plugin.contributions()
    after_contrib = tracemalloc.take_snapshot()
    tracemalloc.stop()
    lines = [f"import: {sum(s.size for s in after_import.statistics('filename')) / 1024:.1f} KiB"]
    for stat in after_import.statistics("lineno")[:15]:
        lines.append(f"  {stat.size / 1024:7.1f} KiB {stat.count:5d}  {stat.traceback[0]}")
    diff = after_contrib.compare_to(after_import, "lineno")
    grown = sum(d.size_diff for d in diff)
    lines.append(f"contributions: {grown / 1024:+.1f} KiB")
    for d in diff[:8]:
        lines.append(f"  {d.size_diff / 1024:+7.1f} KiB  {d.traceback[0]}")
    os.write(wfd, json.dumps({"text": "\n".join(lines)}).encode())


def _fork(run: Any, *args: Any) -> dict[str, Any]:
    r, w = os.pipe()
    pid = _zygote.clone_parent(_TID) if _TID else os.fork()
    if pid == 0:
        os.close(r)
        status = 0
        try:
            run(*args, w)
        except BaseException as exc:
            os.write(2, f"child: {type(exc).__name__}: {exc}\n".encode())
            status = 1
        os._exit(status)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 20):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


_TID = 0
_AUDIT = False


def _prepare() -> None:
    """What ``_zygote.serve`` does before it serves (see there)."""
    global _TID
    _lockdown.freeze()
    _launch.warm()
    gc.collect()
    _zygote.fill_pools()
    gc.freeze()
    # clone(CLONE_PARENT) would make the children this script's parent's: os.fork instead.
    _TID = 0


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forks", type=int, default=40)
    parser.add_argument("--plugin", type=Path, default=HELLO)
    parser.add_argument("--per-tool", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--audit", action="store_true", help="with the audit hook installed")
    args = parser.parse_args()
    global _AUDIT
    _AUDIT = args.audit
    importlib.import_module("asyncio")
    _prepare()
    plugin_dir = args.plugin.resolve()
    _entry(plugin_dir)
    steps = ("capture logging", "import", "report ready", "first call")
    rows: dict[str, list[list[float]]] = {s: [[], [], []] for s in steps}
    totals: list[list[float]] = [[], [], []]
    for _ in range(args.forks):
        got = _fork(_child_steps, plugin_dir)
        marks = got["marks"]
        for i, step in enumerate(steps):
            for cell, value in zip(rows[step], _step(marks[i], marks[i + 1]), strict=True):
                cell.append(value)
        each = [_step(a, b) for a, b in itertools.pairwise(marks)]
        for cell, value in zip(totals, map(sum, zip(*each, strict=True)), strict=True):
            cell.append(value)
    audit = " (audit hook on)" if args.audit else ""
    print(f"{args.plugin.name}: {args.forks} forks{audit}, medians")
    print(f"{'step':<16} {'CPU ms':>8} {'faults':>8} {'USS KiB':>8}")
    for step in steps:
        cpu, faults, uss = rows[step]
        print(f"{step:<16} {_med(cpu)} {_med(faults)} {_med(uss)}")
    print(f"{'total':<16} {_med(totals[0])} {_med(totals[1])} {_med(totals[2])}")
    if args.per_tool:
        per: dict[str, list[list[float]]] = {}
        for _ in range(max(5, args.forks // 4)):
            for name, a, b in _fork(_child_tool, plugin_dir)["tools"]:
                for cell, value in zip(
                    per.setdefault(name, [[], [], []]), _step(a, b), strict=True
                ):
                    cell.append(value)
        print(f"\none tool's registration, in import order (medians of {args.forks // 4 or 5})")
        print(f"{'tool':<16} {'CPU ms':>8} {'faults':>8} {'USS KiB':>8}")
        for name, (cpu, faults, uss) in per.items():
            print(f"{name:<16} {_med(cpu)} {_med(faults)} {_med(uss)}")
    if args.tracemalloc:
        print("\n" + _fork(_child_tracemalloc, plugin_dir)["text"])


if __name__ == "__main__":
    main()
