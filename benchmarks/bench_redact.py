"""What redacting a hostile plugin's text costs the host, worst case.

    .venv/bin/python benchmarks/bench_redact.py [--sizes 1,8,64] [--keep 3]

For every rule of the redaction table (and any operator pattern passed with ``--pattern``),
the near-miss inputs generated from the rule itself (``tests/redact_worst.py``) are ranked,
and the worst few timed at each size: the figure is µs per KiB, the best of three runs (so
another process's time slice is not counted). Linear rules show the same figure at every
size; a super-linear one grows with it. Then the whole path a record takes - one stderr line
at the worker's 4 KiB cut, one ``ctx.log`` record with fields at the sink's budget - made of
the worst inputs of every rule: the longest the host's loop is held by one record.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cordon.protocol import PluginError
from cordon.runtime._hostapi._logsink import LogSink
from cordon.runtime._hostapi._redact import RULES, Redactor, Rule
from tests.redact_worst import cost_per_kib, worst_attacks


class _Discard:
    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


def per_rule(rules: list[Rule], sizes: list[int], keep: int) -> list[str]:
    units: list[str] = []
    print(f"{'rule':22} {'worst input (repeated)':30} " + " ".join(f"{s:>8} KiB" for s in sizes))
    for rule in rules:
        worst: dict[int, float] = dict.fromkeys(sizes, 0.0)
        label = ""
        for attack in worst_attacks(rule.apply, rule.pattern, keep=keep, size=8192):
            units.append(attack.unit)
            costs = {s: cost_per_kib(rule.apply, attack.make(s * 1024)) for s in sizes}
            if costs[sizes[-1]] > worst[sizes[-1]]:
                worst, label = costs, repr(attack.unit[:26])
        cells = " ".join(f"{worst[s] * 1e6:9.1f} µs" for s in sizes)
        print(f"{rule.name:22} {label:30} {cells}")
    return units


def best_ms(run: Callable[[], object], trials: int = 3) -> float:
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def whole_path(units: list[str]) -> None:
    redactor = Redactor()
    mixed = "".join(u * 8 for u in units)
    for size in (4096, 65536):
        text = (mixed * (size // len(mixed) + 1))[:size]
        print(
            f"Redactor.text, every rule's worst mixed, {size // 1024} KiB: "
            f"{cost_per_kib(redactor.text, text) * 1e6:.1f} µs/KiB"
        )
    sink = LogSink(_Discard(), rate=1e9, burst=1e9, redact_share=1e9)
    line_ms: list[float] = []
    record_ms: list[float] = []
    for unit in units:
        line = (unit * (4096 // len(unit) + 1))[:4096].replace("\n", " ").encode()
        field = (unit * (8192 // len(unit) + 1))[:8192]
        line_ms.append(best_ms(functools.partial(sink.plugin_output, "p", line)))
        fields = {"value": field, field[:200]: field}
        record_ms.append(best_ms(functools.partial(sink.log, "p", "warning", field[:1024], fields)))
    error_ms: list[float] = []
    for unit in units:
        big = (unit * (65536 // len(unit) + 1))[:65536]
        err = PluginError(big, exc_type="ValueError", exc_message=big, traceback=big)
        error_ms.append(best_ms(functools.partial(redactor.clean_error, err)))
    print(
        f"A plugin's error (64 KiB message and traceback) cleaned: median "
        f"{statistics.median(error_ms):.2f} ms, worst {max(error_ms):.2f} ms (best of 3 each)"
    )
    for name, ms in (
        ("stderr line (4 KiB)", line_ms),
        ("ctx.log record (fields at budget)", record_ms),
    ):
        print(
            f"LogSink, one {name}: median {statistics.median(ms):.2f} ms, "
            f"worst {max(ms):.2f} ms over {len(ms)} worst-case inputs (best of 3 each)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,8,64", help="KiB, comma-separated")
    ap.add_argument("--keep", type=int, default=3, help="worst inputs timed per rule")
    ap.add_argument("--pattern", action="append", default=[], help="an operator pattern too")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rules = list(RULES) + [
        Rule(f"operator-{i}", re.compile(p), "[REDACTED]") for i, p in enumerate(args.pattern, 1)
    ]
    units = per_rule(rules, sizes, args.keep)
    whole_path(units)


if __name__ == "__main__":
    main()
