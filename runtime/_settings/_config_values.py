"""How one value of ``cordon.toml`` is read: the field checkers the config's tables share.

Each checker takes ``(checker, toml_path, value, base_dir)`` and returns the parsed value or
:data:`~._validate.INVALID` (the problem already recorded), so a table is a map from key to
checker (see :mod:`._plugin_keys`). The conventions live here once: sizes must carry a unit,
a lifted limit is spelled ``"unlimited"`` (TOML has no null), relative paths resolve against
the config file's folder, and a plugin's free-form settings must be plain TOML data.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final, TypeAlias

from ._permissions import check_grant_string
from ._units import format_size, parse_duration, parse_size, unitless_size
from ._validate import INVALID, PLUGIN_ID, Checker, Invalid, join, show

__all__ = [
    "UNLIMITED",
    "FieldParse",
    "bool_field",
    "check_plugin_id",
    "choice_field",
    "count_field",
    "duration_field",
    "grants_field",
    "path_field",
    "paths_field",
    "rate_field",
    "settings_field",
    "size_field",
]

#: How a limit that may be lifted is spelled in TOML (which has no null).
UNLIMITED: Final = "unlimited"

FieldParse: TypeAlias = Callable[[Checker, str, object, "Path | None"], Any]

_SIZE_HINT: Final = 'a size with a unit (a string like "256 MiB")'
_DURATION_HINT: Final = 'a duration (a number of seconds or a string like "500 ms")'


def _or_unlimited(expected: str, nullable: bool) -> str:
    return f'{expected} or "{UNLIMITED}"' if nullable else expected


def size_field(*, minimum: int = 0, nullable: bool = False, why: str = "") -> FieldParse:
    """A size that must carry a unit (but 0); ``why`` says what ``minimum`` is for."""

    def parse(ck: Checker, path: str, value: object, _base: Path | None) -> int | Invalid | None:
        if nullable and (value is None or value == UNLIMITED):
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            return ck.wrong_type(path, _or_unlimited(_SIZE_HINT, nullable), value)
        bare = unitless_size(value)
        if bare is not None:
            return ck.add(
                path,
                f'{show(value)} has no unit: write "{bare} MiB" (or "{bare} B" if you mean bytes)',
            )
        n = ck.expect_parsed(path, value, parse_size, _SIZE_HINT)
        if isinstance(n, int) and n < minimum:
            return ck.add(
                path, f"{show(value)} is too small{why} (at least {format_size(minimum)})"
            )
        return n

    return parse


def duration_field(*, positive: bool = False, nullable: bool = False) -> FieldParse:
    def parse(ck: Checker, path: str, value: object, _b: Path | None) -> float | Invalid | None:
        if nullable and (value is None or value == UNLIMITED):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return ck.wrong_type(path, _or_unlimited(_DURATION_HINT, nullable), value)
        s = ck.expect_parsed(path, value, parse_duration, _DURATION_HINT)
        if positive and s == 0:
            return ck.add(path, f"{show(value)} must be longer than zero")
        return s

    return parse


def count_field(*, minimum: int = 0, nullable: bool = False) -> FieldParse:
    def parse(ck: Checker, path: str, value: object, _base: Path | None) -> int | Invalid | None:
        if nullable and (value is None or value == UNLIMITED):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return ck.wrong_type(path, _or_unlimited("an integer", nullable), value)
        return ck.expect_int(path, value, minimum=minimum)

    return parse


def rate_field(ck: Checker, path: str, value: object, _base: Path | None) -> float | Invalid:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ck.wrong_type(path, "a number (lines per second)", value)
    if not math.isfinite(value) or value <= 0:
        return ck.add(path, f"must be a positive number, got {show(value)}")
    return float(value)


def choice_field(choices: tuple[str, ...]) -> FieldParse:
    def parse(ck: Checker, path: str, value: object, _base: Path | None) -> str | Invalid:
        return ck.expect_choice(path, value, choices)

    return parse


def bool_field(ck: Checker, path: str, value: object, _base: Path | None) -> bool | Invalid:
    return ck.expect_bool(path, value)


def _resolve(text: str, base_dir: Path | None) -> str:
    """Relative paths are relative to the config file, not to wherever cordon was started."""
    p = Path(text).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    # normpath, not resolve(): symlinks are the sandbox's business at the time it applies.
    return os.path.normpath(p)


def path_field(ck: Checker, path: str, value: object, base: Path | None) -> str | Invalid:
    text = ck.expect_str(path, value)
    if isinstance(text, Invalid):
        return text
    if "\x00" in text:
        return ck.add(path, f"{show(text)} is not a path (NUL character)")
    return _resolve(text, base)


def paths_field(
    ck: Checker, path: str, value: object, base: Path | None
) -> tuple[str, ...] | Invalid:
    items = ck.expect_list(path, value)
    if isinstance(items, Invalid):
        return items
    out: list[str] = []
    for i, item in enumerate(items):
        p = path_field(ck, join(path, i), item, base)
        if not isinstance(p, Invalid):
            out.append(p)
    return tuple(out) if len(out) == len(items) else INVALID


def grants_field(*, deny: bool) -> FieldParse:
    def parse(ck: Checker, path: str, value: object, _b: Path | None) -> tuple[str, ...] | Invalid:
        return ck.expect_str_list(path, value, check=lambda p: check_grant_string(p, deny=deny))

    return parse


_TOML_SCALARS: Final = (str, int, float, bool, datetime, date, time)


def _check_toml_value(ck: Checker, path: str, value: object) -> bool:
    """Settings travel to the worker as JSON; refuse (from code) what TOML could not hold."""
    if isinstance(value, _TOML_SCALARS):
        return True
    if isinstance(value, list | tuple):
        results = [_check_toml_value(ck, join(path, i), v) for i, v in enumerate(value)]
        return all(results)
    if isinstance(value, Mapping):
        ok = True
        for k, v in value.items():
            if not isinstance(k, str):
                ck.add(join(path, str(k)), f"keys must be strings, got {show(k)}")
                ok = False
            elif not _check_toml_value(ck, join(path, k), v):
                ok = False
        return ok
    ck.wrong_type(path, "a TOML value", value)
    return False


def settings_field(
    ck: Checker, path: str, value: object, _base: Path | None
) -> dict[str, Any] | Invalid:
    table = ck.expect_table(path, value)
    if isinstance(table, Invalid):
        return table
    if not _check_toml_value(ck, path, table):
        return INVALID
    # A private copy: the caller's mapping must not be able to change a frozen config later.
    return copy.deepcopy(dict(table))


def check_plugin_id(plugin_id: str) -> str | None:
    if PLUGIN_ID.fullmatch(plugin_id):
        return None
    return (
        f"{show(plugin_id)} is not a plugin id (lower-case letter, then up to 63 lower-case "
        "letters, digits, _ or -)"
    )
