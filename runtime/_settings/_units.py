"""Sizes and durations as operators write them: ``"256 MiB"``, ``"1.5 GB"``, ``"500 ms"``.

Parsing is exact: numbers are read as decimal fractions, never floats, so ``"1.1 GB"`` is
exactly 1 100 000 000 bytes and ``"0.1 KiB"`` (102.4 bytes) is refused rather than rounded.

Formatting is *lossless* by default: :func:`format_size` and :func:`format_duration` pick the
largest unit that still parses back to the same value, so ``cordon config show`` output can be
pasted into a config file unchanged. ``exact=False`` gives a rounded form for messages.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Final

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size", "unitless_size"]

# A plain decimal: no sign (negatives get their own message), no exponent (`1e3 MiB` is more
# likely a typo than intent), underscores allowed as in TOML and Python integers.
_NUMBER: Final = r"(?P<num>[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)"
_QUANTITY: Final = re.compile(rf"^\s*(?P<sign>[-+]?)\s*{_NUMBER}\s*(?P<unit>[^\s0-9.]*)\s*$")

_IEC: Final = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_SI: Final = {"kB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}

# Units are matched case-insensitively only where that cannot change the meaning:
# * anything with the IEC "i" (kib, MIB) is unambiguous;
# * SI prefixes may be any case (KB = kB, gB = GB: nobody means milli- or giga-bits of RAM),
#   but the B must be upper case, because "Mb" conventionally means megabits;
# * a bare prefix ("64M", "1g") is refused: it could be SI or IEC, a 5% difference at GB.
_SIZE_UNITS: Final[dict[str, int]] = {
    "": 1,
    "B": 1,
    "byte": 1,
    "bytes": 1,
    **{k.lower(): v for k, v in _IEC.items()},
}
_SI_PREFIXES: Final = {"k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}

_DURATION_UNITS: Final[dict[str, Fraction]] = {}
for _names, _factor in (
    (("ns", "nsec", "nanosecond", "nanoseconds"), Fraction(1, 10**9)),
    (("us", "µs", "μs", "usec", "microsecond", "microseconds"), Fraction(1, 10**6)),
    (("ms", "msec", "millisecond", "milliseconds"), Fraction(1, 1000)),
    (("", "s", "sec", "secs", "second", "seconds"), Fraction(1)),
    (("m", "min", "mins", "minute", "minutes"), Fraction(60)),
    (("h", "hr", "hrs", "hour", "hours"), Fraction(3600)),
    (("d", "day", "days"), Fraction(86400)),
):
    for _name in _names:
        _DURATION_UNITS[_name] = _factor


def _quote(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 80 else text[:77] + '..."'


def _size_factor(unit: str) -> int | None:
    if unit in _SIZE_UNITS:
        return _SIZE_UNITS[unit]
    low = unit.lower()
    if low in _SIZE_UNITS and (low.endswith("ib") or low in ("byte", "bytes")):
        return _SIZE_UNITS[low]
    if len(unit) == 2 and unit[1] == "B" and unit[0].lower() in _SI_PREFIXES:
        return _SI_PREFIXES[unit[0].lower()]
    return None


def _size_hint(num: str, unit: str) -> str:
    low = unit.lower()
    if low in _SI_PREFIXES or low in ("kb", "mb", "gb", "tb"):
        si = ("k" if low[0] == "k" else low[0].upper()) + "B"
        iec = low[0].upper() + "iB"
        why = "lowercase b means bits" if low.endswith("b") else "it could mean either"
        return f'say "{num} {si}" (powers of 1000) or "{num} {iec}" (powers of 1024); {why}'
    if low == "b":
        return f'say "{num} B" for bytes; lowercase b means bits'
    return f"unknown unit {_quote(unit)}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"


def _fraction(num: str) -> Fraction:
    return Fraction(num.replace("_", ""))


def parse_size(value: str | int) -> int:
    """A size in bytes. Bare integers (and unit-less strings) are bytes.

    >>> parse_size("256 MiB"), parse_size("1.5 GB"), parse_size("64KiB"), parse_size(100)
    (268435456, 1500000000, 65536, 100)
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{_quote(value)} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is not a size: must not be negative")
        return value
    m = _QUANTITY.match(value)
    if m is None or m["num"].strip("_.") == "":
        raise ValueError(f"{_quote(value)} is not a size")
    factor = _size_factor(m["unit"])
    if factor is None:
        raise ValueError(f"{_quote(value)} is not a size ({_size_hint(m['num'], m['unit'])})")
    if m["sign"] == "-":
        raise ValueError(f"{_quote(value)} is not a size: must not be negative")
    amount = _fraction(m["num"]) * factor
    if amount.denominator != 1:
        raise ValueError(f"{_quote(value)} is not a size: not a whole number of bytes")
    return int(amount)


def unitless_size(value: object) -> str | None:
    """The number, as written, when ``value`` is a non-zero size without a unit (``12``,
    ``"12"``), else ``None``. The configuration refuses those: ``memory = 12`` reads as 12
    bytes, which no worker can run in, while the operator almost certainly meant 12 MiB. Zero
    is the same in every unit, so it stays accepted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value > 0 else None
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value)
    if m is None or m["unit"] or m["sign"] == "-" or m["num"].strip("_.") == "":
        return None
    if _fraction(m["num"]) == 0:
        return None
    return m["num"]


def parse_duration(value: str | int | float) -> float:
    """A duration in seconds. Bare numbers (and unit-less strings) are seconds.

    >>> parse_duration("500 ms"), parse_duration("2 min"), parse_duration("1.5s"), parse_duration(3)
    (0.5, 120.0, 1.5, 3.0)
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_quote(value)} is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{_quote(value)} is not a duration: must be finite")
        if value < 0:
            raise ValueError(f"{_quote(value)} is not a duration: must not be negative")
        return float(value)
    m = _QUANTITY.match(value)
    if m is None or m["num"].strip("_.") == "":
        raise ValueError(f"{_quote(value)} is not a duration")
    factor = _DURATION_UNITS.get(m["unit"].lower())
    if factor is None:
        raise ValueError(
            f"{_quote(value)} is not a duration (unknown unit {_quote(m['unit'])}; "
            "use ms, s, min, h or d)"
        )
    if m["sign"] == "-":
        raise ValueError(f"{_quote(value)} is not a duration: must not be negative")
    return float(_fraction(m["num"]) * factor)


def _trim(x: float) -> str:
    # Three significant digits, but never an exponent: 1234.5 -> "1234", not "1.23e+03".
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def format_size(n: int, *, exact: bool = True) -> str:
    """Bytes for humans: ``268435456`` -> ``"256 MiB"``.

    With ``exact`` (the default) the result parses back to ``n``: the unit giving the smallest
    figure with at most two decimals is chosen (IEC on a tie), else bytes. Without it, a
    binary unit with three significant digits (``"1.18 MiB"``), for messages.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{_quote(n)} is not a size")
    if not exact:
        for unit, factor in reversed(_IEC.items()):
            if n >= factor:
                return f"{_trim(n / factor)} {unit}"
        return f"{n} B"
    # Smallest figure wins ("1.5 GB" over "1500 MB"), as long as it has at most two
    # decimals and is exact: the largest factor with n >= factor and factor dividing 100 n
    # (no IEC factor equals an SI one, so there are no ties). Integers only: this runs for
    # every worker start (the cgroup's description), and Fractions cost ~60 µs a call.
    unit, factor = "B", 1
    for name, f in (*_IEC.items(), *_SI.items()):
        if factor < f <= n and (n * 100) % f == 0:
            unit, factor = name, f
    text = str(n // factor) if n % factor == 0 else _plain(n / factor)
    return f"{text} {unit}"


_DISPLAY_DURATIONS: Final[tuple[tuple[str, Fraction], ...]] = (
    ("d", Fraction(86400)),
    ("h", Fraction(3600)),
    ("min", Fraction(60)),
    ("s", Fraction(1)),
    ("ms", Fraction(1, 1000)),
    ("us", Fraction(1, 10**6)),
)


def _plain(x: float) -> str:
    """The shortest decimal that reads back as ``x``, without an exponent (the parser takes
    none) and without a useless ``.0``."""
    text = format(Decimal(repr(x)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_duration(seconds: float, *, exact: bool = True) -> str:
    """Seconds for humans: ``0.2`` -> ``"200 ms"``, ``120`` -> ``"2 min"``, ``1.5`` -> ``"1.5 s"``.

    With ``exact`` (the default) the result parses back to ``seconds``; without it, rounded
    to three significant digits in the largest fitting unit.
    """
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{_quote(seconds)} is not a duration")
    if seconds == 0:
        return "0 s"
    for unit, factor in _DISPLAY_DURATIONS:
        figure = float(Fraction(seconds) / factor)
        if figure < 1:
            continue
        if not exact:
            return f"{_trim(figure)} {unit}"
        text = _plain(figure)
        # A unit only wins when it reads well (at most three decimals: "1.5 min", not
        # "1.6666666666666667 min") and loses nothing.
        if len(text.partition(".")[2]) <= 3 and parse_duration(f"{text} {unit}") == seconds:
            return f"{text} {unit}"
    # Seconds spelled out in full always read back exactly (see _plain).
    return f"{_plain(seconds)} s"
