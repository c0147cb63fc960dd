"""Frame reassembly cost per MiB, from 64 KiB to 16 MiB frames.

A frame arrives as the host reads it: in 64 KiB pieces (one pipe's worth per read). A
linear splitter costs the same per MiB whatever the frame's size; the quadratic one it
replaced (re-joining and rescanning the held bytes on every read) cost ~20x more per MiB at
16 MiB than at 64 KiB. Prints the median µs per MiB for each size.

    python benchmarks/bench_framing.py
"""

from __future__ import annotations

import statistics
import time
from typing import Final

from cordon.protocol import FrameSplitter

#: The host's read size (runtime/_worker.py READ_SIZE).
READ: Final = 64 * 1024
SIZES_KIB: Final = (64, 256, 1024, 4096, 16 * 1024 - 1)
#: Repeats per size; the median is printed.
ROUNDS: Final = 15


def one_frame_us(payload: bytes) -> float:
    pieces = [payload[i : i + READ] for i in range(0, len(payload), READ)]
    splitter = FrameSplitter(16 * 1024 * 1024)
    t0 = time.perf_counter()
    for piece in pieces:
        frames = splitter.feed(piece)
    elapsed = time.perf_counter() - t0
    assert len(frames) == 1 and len(frames[0]) == len(payload) - 1  # type: ignore[arg-type]
    return elapsed * 1e6


def main() -> None:
    print(f"{'frame':>10}  {'median us':>10}  {'us/MiB':>8}")
    for kib in SIZES_KIB:
        payload = b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * (kib * 1024 - 40) + b'"}\n'
        runs = [one_frame_us(payload) for _ in range(ROUNDS)]
        med = statistics.median(runs)
        mib = len(payload) / (1024 * 1024)
        print(f"{kib:>7} KiB  {med:>10.0f}  {med / mib:>8.0f}")


if __name__ == "__main__":
    main()
