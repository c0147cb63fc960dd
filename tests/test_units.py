"""Sizes and durations: the forms operators write, every refusal, and lossless display."""

from __future__ import annotations

import math

import pytest

from cordon.runtime._settings._units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    unitless_size,
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256 MiB", 256 * MiB),
        ("1.5 GB", 1_500_000_000),
        ("64MiB", 64 * MiB),
        ("512 KiB", 512 * KiB),
        ("100 B", 100),
        ("100", 100),
        (100, 100),
        (0, 0),
        ("0 B", 0),
        ("1 kB", 1000),
        ("1 KB", 1000),
        ("2 TB", 2 * 10**12),
        ("1 TiB", 1024**4),
        ("1 GiB", GiB),
        ("1 kib", KiB),
        ("1 MIB", MiB),
        (".5 KiB", 512),
        ("1.1 GB", 1_100_000_000),
        ("1_000 B", 1000),
        ("  16  MiB  ", 16 * MiB),
        ("3 bytes", 3),
        ("+4 KiB", 4 * KiB),
    ],
)
def test_a_size_is_read_in_si_and_iec_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("lots", '"lots" is not a size'),
        ("", '"" is not a size'),
        ("   ", "is not a size"),
        ("MiB", "is not a size"),
        ("-1 MB", "must not be negative"),
        (-5, "must not be negative"),
        ("0.1 KiB", "not a whole number of bytes"),
        ("1.5 B", "not a whole number of bytes"),
        ("1e3", "is not a size"),
        ("5 parsecs", 'unknown unit "parsecs"'),
        ("64M", 'say "64 MB" (powers of 1000) or "64 MiB" (powers of 1024)'),
        ("1g", "it could mean either"),
        ("64 mb", "lowercase b means bits"),
        ("64 Mb", "lowercase b means bits"),
        ("5 b", "lowercase b means bits"),
        ("1.2.3 MB", "is not a size"),
        ("nan", "is not a size"),
        ("inf", "is not a size"),
        (True, "true is not a size"),
        (1.5, "1.5 is not a size"),
        (None, "None is not a size"),
    ],
)
def test_a_size_that_is_not_one_is_refused_with_the_reason(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match="is not a size") as info:
        parse_size(value)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500 ms", 0.5),
        ("2 min", 120.0),
        ("1.5 s", 1.5),
        ("30s", 30.0),
        ("1 h", 3600.0),
        ("1 d", 86400.0),
        ("100 us", 0.0001),
        ("250 µs", 0.00025),
        ("10 ns", 1e-8),
        ("5m", 300.0),
        ("3 seconds", 3.0),
        ("2 Hours", 7200.0),
        ("500MS", 0.5),
        ("0", 0.0),
        ("0 s", 0.0),
        ("7", 7.0),
        (3, 3.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_a_duration_is_read_in_seconds(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("soon", '"soon" is not a duration'),
        ("", '"" is not a duration'),
        ("-1 s", "must not be negative"),
        (-0.5, "must not be negative"),
        (math.nan, "must be finite"),
        (math.inf, "must be finite"),
        (-math.inf, "must be finite"),
        ("nan s", "is not a duration"),
        ("inf", "is not a duration"),
        ("5 weeks", 'unknown unit "weeks"'),
        ("1.5.2 s", "is not a duration"),
        ("1e3 ms", "is not a duration"),
        (True, "true is not a duration"),
        (None, "None is not a duration"),
    ],
)
def test_a_duration_that_is_not_one_is_refused_with_the_reason(
    value: object, fragment: str
) -> None:
    with pytest.raises(ValueError, match="is not a duration") as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1024, "1 KiB"),
        (1000, "1 kB"),
        (256 * MiB, "256 MiB"),
        (1_500_000_000, "1.5 GB"),
        (1536 * MiB, "1.5 GiB"),
        (1_234_567, "1234567 B"),
    ],
)
def test_a_size_is_shown_in_the_unit_that_reads_best(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.2, "200 ms"),
        (1.5, "1.5 s"),
        (30, "30 s"),
        (60, "1 min"),
        (90, "1.5 min"),
        (100, "100 s"),
        (3600, "1 h"),
        (86400, "1 d"),
        (1e-5, "10 us"),
    ],
)
def test_a_duration_is_shown_in_the_unit_that_reads_best(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "n", [0, 1, 999, 1000, 1023, 1024, 10**9 + 7, 3 * GiB + 512, 16 * MiB, 2**40, 1_048_575]
)
def test_a_shown_size_reads_back_as_the_same_number_of_bytes(n: int) -> None:
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize(
    "seconds", [0.0, 0.2, 1 / 3, 0.001, 1e-9, 2.5, 59.999, 61, 100, 7200.5, 1e7, 1e20, 0.1 + 0.2]
)
def test_a_shown_duration_reads_back_as_the_same_number_of_seconds(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_rounded_display_is_short_and_approximate() -> None:
    assert format_size(1_234_567, exact=False) == "1.18 MiB"
    assert format_size(12, exact=False) == "12 B"
    assert format_duration(100, exact=False) == "1.67 min"
    assert format_duration(0.0004, exact=False) == "400 us"


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_formatting_refuses_what_is_not_a_size(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        format_size(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_formatting_refuses_what_is_not_a_duration(bad: float) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        format_duration(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, "12"),
        ("12", "12"),
        (" 1_024 ", "1_024"),
        ("1.5", "1.5"),
        ("-12", None),
        (0, None),
        ("0", None),
        ("0.0", None),
        ("12 MiB", None),
        ("12 B", None),
        ("lots", None),
        (True, None),
        (1.5, None),
    ],
)
def test_a_size_written_without_a_unit_is_recognised(value: object, expected: str | None) -> None:
    assert unitless_size(value) == expected
