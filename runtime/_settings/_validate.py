"""The validation machinery the config and manifest parsers share.

Both read TOML written by someone else (an operator; a plugin author we do not trust) and
must report *every* problem at once, each under the TOML path it came from, in the same words:
``plugins.hello.memory: "lots" is not a size``, ``defaults.memroy: unknown key (did you mean
"memory"?)``, ``defaults.open-files: expected an integer, got "many"``.

A :class:`Checker` collects :class:`~cordon.runtime._errors.Problem` s; its ``expect_*``
helpers either return the checked value or record a problem and return :data:`INVALID`, so a
parser can run straight through a file and still build whatever is valid.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final, TypeVar

from .._errors import Problem

__all__ = [
    "INVALID",
    "PLUGIN_ID",
    "Checker",
    "Invalid",
    "did_you_mean",
    "join",
    "read_toml",
    "show",
    "type_name",
]

T = TypeVar("T")

#: Plugin ids: lower case so they are safe as directory names, log fields and TOML bare keys.
PLUGIN_ID: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


class Invalid:
    """Marks a value that failed its check (already reported); never a legal value."""

    _instance: Invalid | None = None

    def __new__(cls) -> Invalid:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Final = Invalid()


def join(path: str, key: str | int) -> str:
    """The TOML path of ``key`` inside ``path``: ``join("plugins", "hello")`` ->
    ``plugins.hello``, ``join("plugin.permissions", 2)`` -> ``plugin.permissions[2]``; keys that
    are not bare TOML keys are quoted so the path stays unambiguous."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{part}" if path else part


def show(value: object, limit: int = 60) -> str:
    """A value as it would look in TOML, shortened: manifests are untrusted, and a megabyte
    string must not become a megabyte error message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, datetime | date | time):
        text = value.isoformat()
    else:
        try:
            # No default=: a value JSON cannot hold (a set, from code) must not be shown
            # quoted, as if it were the string it is not.
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "…" + text[-1:]


def type_name(value: object) -> str:
    """``"many"`` -> ``a string``: the TOML name of a value's type, for "got ..." messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    return f"a {type(value).__name__}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "memory"?)`` when a choice is close to ``word``, else ``""``."""
    pool = list(choices)
    # Compare with _ and - unified: `open_files` is the most common slip for `open-files`.
    norm = {c.replace("_", "-").lower(): c for c in pool}
    close = difflib.get_close_matches(word.replace("_", "-").lower(), list(norm), n=1, cutoff=0.6)
    return f' (did you mean "{norm[close[0]]}"?)' if close else ""


def read_toml(path: Path, checker: Checker, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Parse the TOML file at ``path``; a missing file, an unreadable one, bad UTF-8 or bad
    syntax becomes a problem (with tomllib's line and column) and ``{}`` is returned."""
    try:
        if not path.is_file():
            # Also refuses FIFOs and devices: reading one could block or never end.
            what = "does not exist" if not path.exists() else "is not a regular file"
            checker.add("", f"{path} {what}")
            return {}
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1 if max_bytes is not None else -1)
    except OSError as exc:
        checker.add("", f"cannot read {path}: {exc.strerror or exc}")
        return {}
    if max_bytes is not None and len(raw) > max_bytes:
        checker.add("", f"{path} is larger than {max_bytes} bytes")
        return {}
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        checker.add("", f"invalid TOML: not UTF-8 (byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        # The message already carries "(at line L, column C)".
        checker.add("", f"invalid TOML: {exc}")
    return {}


class Checker:
    """Collects problems; ``expect_*`` check one value each and return it or :data:`INVALID`."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def __bool__(self) -> bool:
        return bool(self.problems)

    def add(self, path: str, message: str) -> Invalid:
        self.problems.append(Problem(path, message))
        return INVALID

    def wrong_type(self, path: str, expected: str, value: object) -> Invalid:
        return self.add(path, f"expected {expected}, got {show(value)}")

    # -- tables ---------------------------------------------------------------------------

    def expect_table(self, path: str, value: object) -> Mapping[str, Any] | Invalid:
        if isinstance(value, Mapping):
            return value
        return self.wrong_type(path, "a table", value)

    def check_keys(
        self,
        path: str,
        table: Mapping[str, Any],
        known: Collection[str],
        *,
        required: Collection[str] = (),
    ) -> None:
        """Report keys of ``table`` not in ``known`` (with a did-you-mean) and missing
        ``required`` ones."""
        for key in table:
            if key not in known:
                self.add(join(path, str(key)), "unknown key" + did_you_mean(str(key), known))
        for key in required:
            if key not in table:
                self.add(join(path, key), "missing (required)")

    # -- scalars --------------------------------------------------------------------------

    def expect_str(
        self, path: str, value: object, *, non_empty: bool = True, max_len: int | None = None
    ) -> str | Invalid:
        if not isinstance(value, str):
            return self.wrong_type(path, "a string", value)
        if non_empty and not value.strip():
            return self.add(path, "must not be empty")
        if max_len is not None and len(value) > max_len:
            return self.add(path, f"must be at most {max_len} characters")
        return value

    def expect_bool(self, path: str, value: object) -> bool | Invalid:
        if isinstance(value, bool):
            return value
        return self.wrong_type(path, "true or false", value)

    def expect_int(self, path: str, value: object, *, minimum: int | None = None) -> int | Invalid:
        if isinstance(value, bool) or not isinstance(value, int):
            return self.wrong_type(path, "an integer", value)
        if minimum is not None and value < minimum:
            return self.add(path, f"must be at least {minimum}, got {value}")
        return value

    def expect_choice(self, path: str, value: object, choices: Collection[str]) -> str | Invalid:
        listing = ", ".join(f'"{c}"' for c in choices)
        if not isinstance(value, str):
            return self.wrong_type(path, f"one of {listing}", value)
        if value not in choices:
            return self.add(
                path, f"{show(value)} is not one of {listing}" + did_you_mean(value, choices)
            )
        return value

    def expect_parsed(
        self, path: str, value: object, parse: Callable[[Any], T], expected: str
    ) -> T | Invalid:
        """Run ``parse`` (which raises ``ValueError`` with a full message) on ``value``;
        values of the wrong type entirely get the usual "expected ..., got ..." message."""
        try:
            return parse(value)
        except ValueError as exc:
            return self.add(path, str(exc))
        except TypeError:
            return self.wrong_type(path, expected, value)

    # -- arrays ---------------------------------------------------------------------------

    def expect_list(self, path: str, value: object) -> list[Any] | Invalid:
        if isinstance(value, list | tuple):
            return list(value)
        return self.wrong_type(path, "an array", value)

    def expect_str_list(
        self,
        path: str,
        value: object,
        *,
        check: Callable[[str], str | None] | None = None,
        unique: bool = False,
    ) -> tuple[str, ...] | Invalid:
        """An array of strings; ``check`` returns why one entry is bad (or ``None``)."""
        items = self.expect_list(path, value)
        if items is INVALID:
            return INVALID
        assert isinstance(items, list)
        ok = True
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            where = join(path, i)
            if self.expect_str(where, item) is INVALID:
                ok = False
                continue
            reason = check(item) if check is not None else None
            if reason is not None:
                self.add(where, reason)
                ok = False
            elif unique and item in seen:
                self.add(where, f"duplicate of {join(path, seen[item])} ({show(item)})")
                ok = False
            seen.setdefault(item, i)
        return tuple(items) if ok else INVALID
