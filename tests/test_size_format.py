"""``format_size`` (exact): the smallest figure with at most two decimals that reads back as
the same number of bytes, computed with integers. Checked against the definition written
with exact fractions, over every unit's boundaries and multiples."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from cordon.runtime._settings._units import _IEC, _SI, format_size, parse_size

#: Every unit's factor, as (name, bytes).
UNITS = [*_IEC.items(), *_SI.items()]


def _by_definition(n: int) -> tuple[Fraction, str]:
    """The figure and unit the exact format must show: of the units whose figure is at least
    1 and has at most two decimals, the smallest figure (bytes when none)."""
    best = (Fraction(n), "B")
    for unit, factor in UNITS:
        figure = Fraction(n, factor)
        if 1 <= figure < best[0] and (figure * 100).denominator == 1:
            best = (figure, unit)
    return best


def _sizes() -> list[int]:
    sizes = [0, 1, 99, 100, 101, 999, 1000, 1023, 1024, 1025, 2**63 - 1]
    for _, factor in UNITS:
        for k in (1, 2, 3, 7, 50, 99, 100, 101, 150, 1000, 1023, 1024, 1025, 99999):
            sizes += [k * factor // 100, k * factor // 100 + 1, k * factor - 1, k * factor]
    rng = random.Random(17)
    sizes += [rng.randrange(2**50) for _ in range(2000)]
    sizes += [rng.randrange(1, 10**6) * rng.choice([10, 1000, 1024, 2**20]) for _ in range(2000)]
    return sizes


def test_an_exact_size_shows_the_smallest_figure_with_at_most_two_decimals() -> None:
    for n in _sizes():
        figure, unit = _by_definition(n)
        text, shown_unit = format_size(n).split(" ")
        assert (Fraction(text), shown_unit) == (figure, unit), n


def test_an_exact_size_reads_back_as_the_same_bytes() -> None:
    for n in _sizes():
        assert parse_size(format_size(n)) == n, n


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1"])
def test_a_negative_or_non_integer_size_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        format_size(bad)  # type: ignore[arg-type]
