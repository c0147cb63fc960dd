"""Plugin versions, as a public API: compare, check a requirement, detect a breaking change,
and plan the migration of a plugin's stored data from one version to another.

>>> from cordon.runtime.versions import compare, is_breaking, migration_path, satisfies
>>> compare("1.10.0", "1.9.0")                     # PEP 440 order, not text order
1
>>> satisfies("1.4.2", "^1.2"), satisfies("2.0.0rc1", "^1.2")
(True, False)
>>> is_breaking("1.4.0", "2.0.0"), is_breaking("0.3.0", "0.4.0"), is_breaking("1.3", "1.9")
(True, True, False)
>>> migration_path("1.2.0", "3.1.0", ["1.2.0", "1.3.0", "2.0.0", "2.4.1", "3.0.0", "3.1.0"])
['2.0.0', '3.0.0', '3.1.0']

Every version is PEP 440 (``1.10 > 1.9``, ``2.0.0rc1 < 2.0.0``); requirements are PEP 440
specifier sets plus npm's ``^`` and ``~``. A malformed version or requirement is a
:class:`InvalidVersionError` naming the value — a :class:`VersionError`, which is both a
:class:`~cordon.protocol.CordonError` and a :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from packaging.version import InvalidVersion, Version

from cordon.protocol import CordonError

from ._platform import _versions
from ._settings._manifest import translate_requirement

__all__ = [
    "InvalidVersionError",
    "NoMigrationPath",
    "VersionError",
    "compare",
    "is_breaking",
    "migration_path",
    "satisfies",
]


# Codes next to the DependencyError family (-32030..-32035): host-side only, they never cross
# the wire, but every cordon error class has its own code.
class VersionError(CordonError, ValueError):
    """A version question that has no answer; also a :class:`ValueError`, so code that
    caught :class:`packaging.version.InvalidVersion` keeps working."""

    code = -32036


class InvalidVersionError(VersionError):
    """``value`` is not a PEP 440 version (``kind="version"``) or not a requirement
    (``kind="requirement"``); ``detail`` says why."""

    code = -32037
    _fields: ClassVar[tuple[str, ...]] = ("value", "kind", "detail")
    value: object
    kind: str | None
    detail: str | None

    def _default_message(self) -> str:
        return f"{self.value!r} is not a valid {self.kind or 'version'}: {self.detail}"


class NoMigrationPath(VersionError):
    """No migration leads from ``old`` to ``new``: ``reason`` is ``"downgrade"`` (``new`` is
    older than ``old``) or ``"not-available"`` (``new`` is not among the releases given)."""

    code = -32038
    _fields: ClassVar[tuple[str, ...]] = ("old", "new", "reason")
    old: str | None
    new: str | None
    reason: str | None

    def _default_message(self) -> str:
        if self.reason == "downgrade":
            return (
                f"cannot migrate from {self.old} to {self.new}: {self.new} is older "
                "(stored data is never migrated backwards)"
            )
        return f"cannot migrate from {self.old} to {self.new}: {self.new} is not among the releases"


def _parse(value: object) -> Version:
    if not isinstance(value, str):
        raise InvalidVersionError(value=value, kind="version", detail="not a string")
    try:
        return Version(value)
    except InvalidVersion:
        raise InvalidVersionError(
            value=value, kind="version", detail="not a PEP 440 version (like 1.2.0 or 2.0rc1)"
        ) from None


def compare(a: str, b: str) -> int:
    """``-1``, ``0`` or ``1`` as PEP 440 orders ``a`` and ``b`` (``"1.0" == "1.0.0"``)."""
    va, vb = _parse(a), _parse(b)
    return (va > vb) - (va < vb)


def satisfies(version: str, spec: str, *, prereleases: bool = True) -> bool:
    """Whether ``version`` meets ``spec``: a PEP 440 specifier set (``">=1.2,<2"``), npm's
    ``^1.2`` (``>=1.2,<2``; ``^0.3`` is ``>=0.3,<0.4``) or ``~1.2.3`` (``>=1.2.3,<1.3``), and
    ``""``/``"*"`` for any version.

    ``prereleases`` is true by default because this checks one version that *is* installed;
    exclusive upper bounds still keep the next major's pre-releases out (``^1.0`` refuses
    ``2.0.0rc1``).
    """
    v = _parse(version)
    try:
        requirement = translate_requirement(spec)
    except ValueError as exc:
        raise InvalidVersionError(value=spec, kind="requirement", detail=str(exc)) from None
    return requirement.contains(v, prereleases=prereleases)


def is_breaking(old: str, new: str) -> bool:
    """Whether moving from ``old`` to ``new`` may break code or data written for ``old``.

    Breaking: a major bump; while at ``0.x`` a minor bump; while at ``0.0.x`` any bump; an
    epoch change; any move across those lines, downgrades included; and leaving a
    pre-release (it promises nothing, not even to its own final release). Never breaking:
    a move within a stable line, post-releases and local labels (``+build``).
    """
    _parse(old), _parse(new)
    return _versions.is_breaking(old, new)


def migration_path(old: str, new: str, available: Iterable[str]) -> list[str]:
    """The releases a plugin's stored data must be migrated through, in order, to go from
    ``old`` to ``new``: the first release of each compatibility line after ``old``'s (each
    major; each minor while at ``0.x``), then ``new`` itself. ``[]`` when ``old == new``.

    >>> migration_path("0.1.0", "1.2.0", ["0.1.5", "0.2.0", "0.2.3", "1.0.0", "1.2.0"])
    ['0.2.0', '1.0.0', '1.2.0']

    * ``available`` may come in any order and with repeats (``"2.0"`` and ``"2.0.0"`` are
      one release; the first spelling is kept); the strings returned are its own spellings.
      Releases outside ``(old, new]`` are ignored.
    * Pre-releases and dev releases are never stops on the way (their data format is not a
      promise); ``new`` may be one. A line whose only releases are pre-releases is skipped.
    * ``old`` need not be in ``available`` (it may have been withdrawn); ``new`` must be:
      else :class:`NoMigrationPath` (``reason="not-available"``). ``new`` older than ``old``
      is :class:`NoMigrationPath` (``reason="downgrade"``). Any malformed version, in
      ``available`` too, is :class:`InvalidVersionError` naming it.
    """
    if isinstance(available, str | bytes):
        # A lone string iterates as characters: never what the caller meant.
        raise TypeError("available must be a collection of version strings, not one string")
    v_old, v_new = _parse(old), _parse(new)
    releases: dict[Version, str] = {}
    for text in available:
        releases.setdefault(_parse(text), text)
    if v_new < v_old:
        raise NoMigrationPath(old=old, new=new, reason="downgrade")
    if v_new not in releases:
        raise NoMigrationPath(old=old, new=new, reason="not-available")
    if v_new == v_old:
        return []
    path: list[str] = []
    current = v_old
    for v in sorted(releases):
        if not (v_old < v < v_new) or v.is_prerelease:
            continue
        # A stop wherever a step from the last stop would break: the first stable release
        # of each new line (and of old's own line, when old is a pre-release).
        if _versions.is_breaking(str(current), str(v)):
            path.append(releases[v])
            current = v
    path.append(releases[v_new])
    return path
