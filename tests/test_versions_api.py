"""The public versions API, ``cordon.runtime.versions``: compare, satisfies, is_breaking and
migration_path, with typed errors for every malformed input."""

from __future__ import annotations

import random

import pytest
from packaging.version import Version

import cordon.runtime
from cordon.protocol import CordonError
from cordon.runtime import versions
from cordon.runtime.versions import (
    InvalidVersionError,
    NoMigrationPath,
    VersionError,
    compare,
    is_breaking,
    migration_path,
    satisfies,
)


def test_the_module_exports_exactly_its_documented_names() -> None:
    assert sorted(versions.__all__) == [
        "InvalidVersionError",
        "NoMigrationPath",
        "VersionError",
        "compare",
        "is_breaking",
        "migration_path",
        "satisfies",
    ]
    assert cordon.runtime.versions is versions
    for name in ("InvalidVersionError", "NoMigrationPath", "VersionError"):
        assert getattr(cordon.runtime, name) is getattr(versions, name)


# -- compare, satisfies, is_breaking ------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.10.0", "1.9.0", 1),
        ("1.0", "1.0.0", 0),
        ("2.0.0rc1", "2.0.0", -1),
        ("1.0.post1", "1.0", 1),
        ("1!0.1", "99.0", 1),
    ],
)
def test_compare_orders_by_pep_440(a: str, b: str, expected: int) -> None:
    assert compare(a, b) == expected
    assert compare(b, a) == -expected


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("1.4.2", "^1.2", True),
        ("2.0.0", "^1.2", False),
        ("2.0.0rc1", "^1.2", False),
        ("0.3.9", "^0.3", True),
        ("0.4.0", "^0.3", False),
        ("1.2.9", "~1.2.3", True),
        ("1.3.0", "~1.2.3", False),
        ("1.5", ">=1.2,<2", True),
        ("3.0", "", True),
        ("3.0", "*", True),
        ("1.0.0rc1", ">=0.9", True),
    ],
)
def test_satisfies_reads_pep_440_and_npm_style_requirements(
    version: str, spec: str, expected: bool
) -> None:
    assert satisfies(version, spec) is expected


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("1.2.0", "2.0.0", True),
        ("0.3.0", "0.4.0", True),
        ("0.0.3", "0.0.4", True),
        ("1.2.0", "1.9.0", False),
        ("0.3.0", "0.3.7", False),
        ("2.0.0rc1", "2.0.0", True),
        ("1.0.0", "1.0.0.post1", False),
        ("2.0.0", "1.9.0", True),
        ("1.0", "1!1.0", True),
    ],
)
def test_is_breaking_is_a_major_bump_or_a_minor_one_at_zero(
    old: str, new: str, expected: bool
) -> None:
    assert is_breaking(old, new) is expected


@pytest.mark.parametrize(
    "call",
    [
        lambda: compare("1.x", "1.0"),
        lambda: compare("1.0", "1.x"),
        lambda: satisfies("1.x", ">=1"),
        lambda: is_breaking("1.0", "1.x"),
        lambda: migration_path("1.x", "2.0", ["2.0"]),
        lambda: migration_path("1.0", "1.x", ["1.x"]),
        lambda: migration_path("1.0", "2.0", ["1.5", "1.x", "2.0"]),
    ],
)
def test_a_malformed_version_is_a_typed_error_naming_it(call: object) -> None:
    assert callable(call)
    with pytest.raises(InvalidVersionError) as err:
        call()
    assert err.value.value == "1.x"
    assert err.value.kind == "version"
    assert "'1.x'" in err.value.message
    assert isinstance(err.value, VersionError | CordonError | ValueError)


def test_a_version_that_is_not_a_string_is_a_typed_error() -> None:
    with pytest.raises(InvalidVersionError) as err:
        migration_path("1.0", "2.0", ["2.0", 3])  # type: ignore[list-item]
    assert err.value.value == 3


def test_a_malformed_requirement_is_a_typed_error_naming_it() -> None:
    with pytest.raises(InvalidVersionError) as err:
        satisfies("1.0", "1.0")
    assert (err.value.value, err.value.kind) == ("1.0", "requirement")
    assert "did you mean" in err.value.message


# -- migration_path -----------------------------------------------------------------------------

RELEASES = ["1.2.0", "1.3.0", "2.0.0", "2.4.1", "3.0.0", "3.1.0"]


def test_migration_goes_through_the_first_release_of_each_major_then_the_target() -> None:
    assert migration_path("1.2.0", "3.1.0", RELEASES) == ["2.0.0", "3.0.0", "3.1.0"]


def test_migration_order_does_not_depend_on_the_order_releases_are_given_in() -> None:
    shuffled = list(reversed(RELEASES))
    assert migration_path("1.2.0", "3.1.0", shuffled) == ["2.0.0", "3.0.0", "3.1.0"]


def test_migration_to_the_first_release_of_a_major_ends_there() -> None:
    assert migration_path("1.2.0", "3.0.0", RELEASES) == ["2.0.0", "3.0.0"]


def test_migration_within_a_major_is_one_step_and_to_itself_none() -> None:
    assert migration_path("1.2.0", "1.3.0", RELEASES) == ["1.3.0"]
    assert migration_path("3.1.0", "3.1.0", RELEASES) == []


def test_at_zero_each_minor_release_is_its_own_line() -> None:
    available = ["0.1.0", "0.1.5", "0.2.0", "0.2.3", "0.3.0", "1.0.0", "1.2.0"]
    assert migration_path("0.1.0", "1.2.0", available) == ["0.2.0", "0.3.0", "1.0.0", "1.2.0"]


def test_pre_releases_are_never_stops_but_may_be_the_target() -> None:
    available = ["1.0.0", "2.0.0a1", "2.0.0rc1", "2.0.0", "2.1.0", "3.0.0b2"]
    assert migration_path("1.0.0", "2.1.0", available) == ["2.0.0", "2.1.0"]
    assert migration_path("1.0.0", "3.0.0b2", available) == ["2.0.0", "3.0.0b2"]
    # A major that only ever had pre-releases is not a stop.
    assert migration_path("1.0.0", "4.0.0", ["1.0.0", "2.0.0b1", "3.0.0", "4.0.0"]) == [
        "3.0.0",
        "4.0.0",
    ]


def test_leaving_a_pre_release_goes_through_its_final_release() -> None:
    assert migration_path("2.0.0rc1", "2.1.0", ["2.0.0", "2.1.0"]) == ["2.0.0", "2.1.0"]


def test_equal_spellings_are_one_release_and_the_callers_spelling_is_kept() -> None:
    assert migration_path("1.0", "3.0", ["2.0", "2.0.0", "3"]) == ["2.0", "3"]


def test_old_need_not_be_an_available_release() -> None:
    assert migration_path("1.1.0", "2.4.1", ["2.0.0", "2.4.1"]) == ["2.0.0", "2.4.1"]


def test_a_target_that_is_not_available_is_a_typed_error() -> None:
    with pytest.raises(NoMigrationPath) as err:
        migration_path("1.2.0", "4.0.0", RELEASES)
    assert err.value.fields() == {"old": "1.2.0", "new": "4.0.0", "reason": "not-available"}
    assert "4.0.0 is not among the releases" in err.value.message


def test_a_downgrade_is_a_typed_error() -> None:
    with pytest.raises(NoMigrationPath) as err:
        migration_path("3.1.0", "2.0.0", RELEASES)
    assert err.value.reason == "downgrade"
    assert isinstance(err.value, VersionError)


def test_a_lone_string_for_the_releases_is_refused() -> None:
    with pytest.raises(TypeError, match="not one string"):
        migration_path("1.0", "2.0", "2.0")


def _random_version(rng: random.Random) -> str:
    major = rng.choice([0, 0, 1, 2, 3, 4])
    text = f"{major}.{rng.randrange(4)}.{rng.randrange(4)}"
    roll = rng.random()
    if roll < 0.15:
        text += rng.choice(["a1", "b2", "rc1", ".dev3"])
    elif roll < 0.2:
        text += ".post1"
    return text


@pytest.mark.parametrize("seed", range(200))
def test_a_migration_path_never_jumps_over_a_breaking_release(seed: int) -> None:
    rng = random.Random(seed)
    available = [_random_version(rng) for _ in range(rng.randrange(1, 25))]
    old, new = sorted(
        rng.sample(available, 2) if len(available) > 1 else available * 2, key=Version
    )
    path = migration_path(old, new, available)
    if Version(old) == Version(new):
        assert path == []
        return
    # Ends at the target, strictly ascending, only given releases.
    assert Version(path[-1]) == Version(new)
    steps = [Version(p) for p in path]
    assert steps == sorted(set(steps))
    assert set(path) <= set(available)
    assert all(not s.is_prerelease for s in steps[:-1])
    # Safety: between consecutive stops no stable release would have broken compatibility,
    # so no data format is skipped.
    stable = [Version(a) for a in available if not Version(a).is_prerelease]
    for a, b in zip([Version(old), *steps], steps, strict=False):
        skipped = [w for w in stable if a < w < b]
        assert not any(is_breaking(str(a), str(w)) for w in skipped), (old, new, path)
    # Minimality: every stop but the target starts a new line.
    for a, b in zip([Version(old), *steps], steps[:-1], strict=False):
        assert is_breaking(str(a), str(b)), (old, new, path)
