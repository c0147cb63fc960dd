"""Packing, verifying and extracting a ``.cordon`` package: medians over several rounds for a
small plugin (a dozen source files) and a larger one (hundreds of files, a few MiB), so a
change to the format's checks shows up as a number.

    python benchmarks/bench_pack.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cordon.runtime._packages._archive import extract, open_package, pack

ROUNDS: Final = 7
#: (label, files, bytes per file): a typical plugin and a data-heavy one.
SHAPES: Final = (("small: 12 files x 4 KiB", 12, 4096), ("large: 600 files x 8 KiB", 600, 8192))

MANIFEST: Final = """\
[plugin]
id = "bench"
name = "Bench"
version = "1.0.0"
entry = "bench_plugin:plugin"
"""


def make_plugin(root: Path, files: int, size: int) -> Path:
    root.mkdir()
    (root / "plugin.toml").write_text(MANIFEST)
    (root / "bench_plugin.py").write_text("def plugin():\n    return 1\n")
    line = b"value = 'some text that compresses like source code does'\n"
    body = (line * (size // len(line) + 1))[:size]
    for i in range(files):
        sub = root / f"pkg{i % 10}"
        sub.mkdir(exist_ok=True)
        (sub / f"mod{i}.py").write_bytes(body + str(i).encode())
    return root


def median_ms(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_shape(base: Path, label: str, files: int, size: int) -> None:
    plugin = make_plugin(base / f"p{files}", files, size)
    out = base / f"out{files}"
    path = pack(plugin, out)
    pkg = open_package(path)
    dests = iter(range(ROUNDS))

    def do_extract() -> None:
        dest = base / f"x{files}-{next(dests)}"
        extract(pkg, dest)
        shutil.rmtree(dest)

    print(
        f"{label}: archive {path.stat().st_size / 1024:.0f} KiB; "
        f"pack {median_ms(lambda: pack(plugin, out)):.1f} ms, "
        f"open_package {median_ms(lambda: open_package(path)):.1f} ms, "
        f"extract {median_ms(do_extract):.1f} ms (medians of {ROUNDS})"
    )


def main() -> None:
    # Under the current directory: a real disk, where extract's writes cost what they cost.
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:
        for label, files, size in SHAPES:
            bench_shape(Path(tmp), label, files, size)


if __name__ == "__main__":
    main()
