"""Worst-case inputs for a regex, generated from the regex itself.

Used by ``tests/test_redact_adversarial.py`` and ``benchmarks/bench_redact.py`` over every
entry of the redaction table, so a pattern added later is attacked without anyone writing
an input for it.

Super-linear regex matching comes from the matcher trying the same text more than once:
from many start positions (a prefix that can start inside the run a quantifier already
scanned) or by backtracking between two quantifiers that can match the same characters. Both
are driven by text that *almost* matches: a prefix of the pattern, followed by what one of its
quantifiers accepts, repeated. So for each cut point of the pattern's top-level sequence we
sample text matching the part before the cut — with several character choices for each class
(its first member, its punctuation, random members), quantifiers either minimal or pumped —
and repeat it, glued by separators, up to the wanted size. What fails to match and makes the
engine rescan is the attack.
"""

from __future__ import annotations

import random
import re
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

__all__ = ["Attack", "attacks", "cost_per_kib", "growth", "worst_attacks"]

#: Characters the sampler may pick for a class; wide enough to include every separator the
#: redaction patterns care about.
_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \t"
_SEPARATORS = ("", " ", "-", ".", "=", ":", "a", "/", "@", '"', "\n")
#: How many times an unbounded quantifier repeats when "pumped".
_PUMP = (1, 8, 64)
_MODES = ("first", "punct", "random0", "random1", "random2")


def _category(cat: Any, ch: str) -> bool:
    name = str(cat)
    neg = "NOT_" in name
    if "WORD" in name:
        hit = ch.isalnum() or ch == "_"
    elif "SPACE" in name:
        hit = ch.isspace()
    elif "DIGIT" in name:
        hit = ch.isdigit()
    elif "LINEBREAK" in name:
        hit = ch == "\n"
    else:
        hit = False
    return hit != neg


def _in_set(items: list[tuple[Any, Any]], ch: str, ignore_case: bool) -> bool:
    negate = False
    hit = False
    for op, av in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            c = chr(av)
            hit = hit or c == ch or (ignore_case and c.lower() == ch.lower())
        elif op is sre.RANGE:
            lo, hi = av
            hit = hit or lo <= ord(ch) <= hi
            if ignore_case:
                hit = hit or lo <= ord(ch.lower()) <= hi or lo <= ord(ch.upper()) <= hi
        elif op is sre.CATEGORY:
            hit = hit or _category(av, ch)
    return hit != negate


class _Sampler:
    """Builds one string matching a parsed sequence, with the given choices."""

    def __init__(self, mode: str, pump: int, ignore_case: bool) -> None:
        self.mode = mode
        self.pump = pump
        self.ignore_case = ignore_case
        self.rng = random.Random(mode)

    def char(self, members: list[str]) -> str:
        if not members:
            return "a"
        if self.mode == "first":
            return members[0]
        if self.mode == "punct":
            punct = [c for c in members if not c.isalnum()]
            return self.rng.choice(punct or members)
        return self.rng.choice(members)

    def seq(self, items: Any) -> str:
        return "".join(self.node(op, av) for op, av in items)

    def node(self, op: Any, av: Any) -> str:
        if op is sre.LITERAL:
            return chr(av)
        if op is sre.NOT_LITERAL:
            return self.char([c for c in _ALPHABET if ord(c) != av])
        if op is sre.ANY:
            return self.char(list(_ALPHABET))
        if op is sre.IN:
            return self.char([c for c in _ALPHABET if _in_set(av, c, self.ignore_case)])
        if op is sre.BRANCH:
            alternatives = av[1]
            pick = 0 if self.mode == "first" else self.rng.randrange(len(alternatives))
            return self.seq(alternatives[pick])
        if op is sre.SUBPATTERN:
            return self.seq(av[3])
        if op is sre.ATOMIC_GROUP:
            return self.seq(av)
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            lo, hi, body = av
            if hi == sre.MAXREPEAT:
                n = max(lo, self.pump)
            else:
                n = hi if self.mode == "first" else self.rng.randint(lo, min(hi, lo + 64))
            return "".join(self.seq(body) for _ in range(n))
        # Anchors and look-arounds consume nothing.
        return ""


@dataclass(frozen=True)
class Attack:
    """A family of inputs: ``make(size)`` is roughly ``size`` characters of the same shape."""

    label: str
    unit: str

    def make(self, size: int) -> str:
        reps = size // max(1, len(self.unit)) + 1
        return (self.unit * reps)[:size]


def _flatten(items: Any) -> list[tuple[Any, Any]]:
    """The sequence with unquantified groups opened up, so a cut can fall inside a group
    (``(scheme://user:)`` is where the URL pattern is attacked)."""
    out: list[tuple[Any, Any]] = []
    for op, av in items:
        if op is sre.SUBPATTERN:
            out += _flatten(av[3])
        elif op is sre.ATOMIC_GROUP:
            out += _flatten(av)
        else:
            out.append((op, av))
    return out


def attacks(pattern: re.Pattern[str]) -> Iterator[Attack]:
    """Every near-miss family for ``pattern`` (deduplicated)."""
    items = _flatten(sre_parse.parse(pattern.pattern, pattern.flags).data)
    ignore_case = bool(pattern.flags & re.IGNORECASE)
    seen: set[str] = set()
    for cut in range(1, len(items) + 1):
        for mode in _MODES:
            for pump in _PUMP:
                prefix = _Sampler(mode, pump, ignore_case).seq(items[:cut])
                if not prefix:
                    continue
                for sep in _SEPARATORS:
                    for unit in (prefix + sep, prefix[:-1] + sep):
                        if unit and unit not in seen and len(unit) <= 4096:
                            seen.add(unit)
                            yield Attack(f"cut {cut}/{len(items)} {mode} x{pump} {sep!r}", unit)


def cost_per_kib(run: Callable[[str], object], text: str, *, trials: int = 5) -> float:
    """CPU seconds per KiB of ``run(text)``: the best of ``trials``, each repeating the call
    until ~2 ms of this thread's CPU time have passed, so small inputs are not lost in the
    timer's noise. Thread CPU time, not the wall clock: other processes on a loaded machine
    take turns on the CPU but do not add to it, so a busy neighbour is not read as growth."""
    best = float("inf")
    for _ in range(trials):
        n = 0
        t0 = time.thread_time()
        elapsed = 0.0
        while elapsed < 0.002 or n == 0:
            run(text)
            n += 1
            elapsed = time.thread_time() - t0
        best = min(best, elapsed / n)
    return best / (len(text) / 1024)


def worst_attacks(
    run: Callable[[str], object], pattern: re.Pattern[str], *, keep: int = 3, size: int = 4096
) -> list[Attack]:
    """The ``keep`` families that cost ``run`` the most per byte at ``size`` characters (two
    quick timings each: this only ranks them)."""
    timed: list[tuple[float, Attack]] = []
    for attack in attacks(pattern):
        text = attack.make(size)
        best = float("inf")
        for _ in range(2):  # the better of two: one preempted run must not rank an input
            t0 = time.thread_time()
            run(text)
            best = min(best, time.thread_time() - t0)
        timed.append((best, attack))
    timed.sort(key=lambda pair: pair[0], reverse=True)
    return [attack for _, attack in timed[:keep]]


def growth(
    run: Callable[[str], object],
    attack: Attack,
    sizes: tuple[int, ...],
    *,
    give_up: float = 16.0,
) -> dict[int, float]:
    """Seconds per KiB at each size, smallest first. Stops early (leaving larger sizes out)
    once the per-byte cost has grown ``give_up`` times: a quadratic case must fail fast
    rather than spend minutes at the largest size."""
    out: dict[int, float] = {}
    base: float | None = None
    for size in sizes:
        cost = cost_per_kib(run, attack.make(size))
        out[size] = cost
        base = cost if base is None else base
        if cost > give_up * base:
            break
    return out
