"""Frame reassembly cost per MiB, from 64 KiB to 16 MiB frames.

A frame arrives as the host reads it: in 64 KiB pieces (one pipe's worth per read). A
linear splitter costs the same per MiB whatever the frame's size; the quadratic one it
replaced (re-joining and rescanning the held bytes on every read) cost ~20x more per MiB at
16 MiB than at 64 KiB. Prints the median µs per MiB for each size, for today's splitter and,
side by side when this is a git checkout, for the one before (``BEFORE``).

Then the host's structural count (``max-frame-values``), per shape of 1 MiB and 64 KiB,
against the one C pass (``bytes.translate``) it used alone before: a long string, bytes at
the sparse lookup's limit, just past it (the worst a frame can make of it), and dense.

    python benchmarks/bench_framing.py
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Final

from cordon.protocol import FrameSplitter
from cordon.protocol._framing import SPARSE_EVERY, structural_count

#: The last commit with the quadratic splitter.
BEFORE: Final = "4f46490"

#: The host's read size (runtime/_worker.py READ_SIZE).
READ: Final = 64 * 1024
SIZES_KIB: Final = (64, 256, 1024, 4096, 16 * 1024 - 1)
#: Repeats per size; the median is printed.
ROUNDS: Final = 15


def one_frame_us(payload: bytes, splitter_class: Any) -> float:
    pieces = [payload[i : i + READ] for i in range(0, len(payload), READ)]
    splitter = splitter_class(16 * 1024 * 1024)
    t0 = time.perf_counter()
    for piece in pieces:
        frames = splitter.feed(piece)
    elapsed = time.perf_counter() - t0
    assert len(frames) == 1 and len(frames[0]) == len(payload) - 1
    return elapsed * 1e6


def old_splitter() -> Any | None:
    """``FrameSplitter`` as of :data:`BEFORE`, or ``None`` outside a git checkout."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:protocol/_framing.py"],
            capture_output=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    namespace: dict[str, Any] = {"__name__": "_framing_before"}
    exec(compile(source, f"{BEFORE}:protocol/_framing.py", "exec"), namespace)
    return namespace["FrameSplitter"]


def main() -> None:
    before = old_splitter()
    print(f"{'frame':>10}  {'median us':>10}  {'us/MiB':>8}  {'before us/MiB':>14}")
    for kib in SIZES_KIB:
        payload = b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * (kib * 1024 - 40) + b'"}\n'
        mib = len(payload) / (1024 * 1024)
        med = statistics.median(one_frame_us(payload, FrameSplitter) for _ in range(ROUNDS))
        old = "-"
        if before is not None:
            old_med = statistics.median(one_frame_us(payload, before) for _ in range(ROUNDS))
            old = f"{old_med / mib:.0f}"
        print(f"{kib:>7} KiB  {med:>10.0f}  {med / mib:>8.0f}  {old:>14}")
    count_shapes()


def _translate_count(data: bytes) -> int:
    return len(data) - len(data.translate(None, b",:[{"))


def _count_us(count: Any, data: bytes) -> float:
    times = []
    for _ in range(ROUNDS * 4):
        t0 = time.perf_counter()
        count(data)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def count_shapes() -> None:
    print(f"{'count':>10}  {'shape':<12} {'sparse+translate us':>20}  {'translate us':>13}")
    for size in (64 * 1024, 1024 * 1024):
        limit = size // SPARSE_EVERY
        shapes = {
            "string": b'"' + b"x" * (size - 2) + b'"',
            "at limit": b"x" * (size - limit) + b"{" * limit,
            "one past": b"x" * (size - 2 * limit) + b"{" * limit + b"," * limit,
            "dense": b"[1]," * (size // 4),
        }
        for name, data in shapes.items():
            assert structural_count(data) == _translate_count(data)
            ours, alone = _count_us(structural_count, data), _count_us(_translate_count, data)
            print(f"{size // 1024:>6} KiB  {name:<12} {ours:>20.1f}  {alone:>13.1f}")


if __name__ == "__main__":
    main()
