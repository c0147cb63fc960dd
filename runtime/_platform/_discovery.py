"""Finding plugins: folders with a ``plugin.toml``, in configured directories and in installed
Python distributions — all without running a line of plugin code.

Four sources, one result:

* an **installed plugin** (``cordon plugin install``) is the version dir its ``current`` link
  names under ``<state>/plugins/<id>/`` (see :mod:`cordon.runtime._packages._store`);
* a **plugin directory** is any folder holding ``plugin.toml``;
* each directory in ``[runtime] plugin-dirs`` holds plugins as immediate subdirectories
  (hidden ones and ``__pycache__`` are skipped; a listed directory that is itself a plugin
  directory counts as that one plugin);
* an installed distribution declares ``[project.entry-points."cordon.plugins"]`` with
  ``hello = "hello_pkg"``, and ships ``hello_pkg/plugin.toml`` as package data.

For entry points the usual ``EntryPoint.load()`` — or even ``importlib.util.find_spec`` on a
dotted name — would import the package (and its parents), which runs the plugin's code in the
host, unsandboxed. So the package folder is located from the distribution's file list
(``RECORD``), and only for installs that list no package files (editable installs) by asking
the finders for the *top-level* name, which locates without executing, then walking folders.

Precedence, when two sources offer the same id: installed plugins first (the operator
installed that id on purpose, verified and with its environment), then ``plugin-dirs`` in the
order listed, then entry points; the loader keeps the first and reports the others.

Discovery only finds; reading and validating the manifest (and noticing that two candidates
share an id) is the loader's job. A broken source becomes a :class:`Problem` with its reason
and never hides the others.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

from packaging.utils import canonicalize_name

from .._errors import Problem
from .._packages._errors import PackageError
from .._settings._manifest import MANIFEST_FILENAME

__all__ = [
    "ENTRY_POINT_GROUP",
    "MANIFEST_FILENAME",
    "Candidate",
    "DiscoveryResult",
    "discover",
    "is_plugin_dir",
    "scan_directory",
    "scan_entry_points",
    "scan_installed",
]

ENTRY_POINT_GROUP: Final = "cordon.plugins"
_SKIPPED_NAMES: Final = frozenset({"__pycache__"})


@dataclass(frozen=True)
class Candidate:
    """A folder that should hold a plugin. ``path`` is absolute and resolved; ``origin`` says
    where it was found: ``"dir:<listed directory>"`` or ``"entry-point:<distribution>"``
    (``entry_point`` then names the entry point, as one distribution may ship several)."""

    path: Path
    origin: str
    entry_point: str | None = None


@dataclass(frozen=True)
class DiscoveryResult:
    """Every candidate found (in a stable order) and every source that could not be read."""

    candidates: tuple[Candidate, ...] = ()
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    def __add__(self, other: DiscoveryResult) -> DiscoveryResult:
        return DiscoveryResult(self.candidates + other.candidates, self.problems + other.problems)


def is_plugin_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder with a ``plugin.toml`` file (``False`` if unreadable)."""
    try:
        return Path(path, MANIFEST_FILENAME).is_file()
    except OSError:
        return False


def _why_not(err: OSError) -> str:
    return err.strerror or type(err).__name__


# -- directories --------------------------------------------------------------------------------


def scan_directory(directory: str | os.PathLike[str]) -> DiscoveryResult:
    """The plugins in one directory: the directory itself if it holds ``plugin.toml``, else
    each immediate subdirectory that does (by name; hidden ones and ``__pycache__`` skipped)."""
    where = Path(directory).absolute()
    origin = f"dir:{where}"
    try:
        if (where / MANIFEST_FILENAME).is_file():
            return DiscoveryResult((Candidate(where.resolve(), origin),))
        if not where.exists():
            return DiscoveryResult(problems=(Problem(origin, "plugin directory does not exist"),))
        if not where.is_dir():
            return DiscoveryResult(problems=(Problem(origin, "not a directory"),))
        # Sorted so the same tree always yields the same candidates in the same order.
        entries = sorted(os.scandir(where), key=lambda e: e.name)
    except OSError as err:
        return DiscoveryResult(problems=(Problem(origin, f"cannot read: {_why_not(err)}"),))

    found: list[Candidate] = []
    problems: list[Problem] = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name in _SKIPPED_NAMES:
            continue
        sub = where / entry.name
        try:
            # Follows symlinks on purpose: linking a checkout into plugin-dirs is how people
            # develop plugins.
            if not entry.is_dir():
                continue
            manifest = sub / MANIFEST_FILENAME
            if manifest.is_file():
                found.append(Candidate(sub.resolve(), origin))
            elif manifest.exists():
                problems.append(Problem(f"{origin}:{entry.name}", f"{manifest} is not a file"))
        except OSError as err:
            problems.append(Problem(f"{origin}:{entry.name}", f"cannot read: {_why_not(err)}"))
    return DiscoveryResult(tuple(found), tuple(problems))


# -- installed plugins --------------------------------------------------------------------------


def scan_installed(state_dir: str | os.PathLike[str]) -> DiscoveryResult:
    """The active version of every plugin installed under ``state_dir`` (origin
    ``installed:<id>``). A record that cannot be read is a problem naming it; a half-written
    install (a link to a missing version) is simply not there (the store logs why)."""
    from .._packages._store import read_installed

    found: list[Candidate] = []
    problems: list[Problem] = []
    for plugin_id, record in read_installed(Path(state_dir)):
        origin = f"installed:{plugin_id}"
        if isinstance(record, PackageError):
            problems.append(Problem(origin, record.message))
        elif record is not None:
            found.append(Candidate(Path(record.plugin_dir), origin))
    return DiscoveryResult(tuple(found), tuple(problems))


# -- installed distributions --------------------------------------------------------------------


def _module_parts(value: str) -> list[str] | None:
    """The dotted package name an entry point's value names, split; ``None`` if it names none.
    Parsed here rather than by ``EntryPoint.module``, which fails with ``AttributeError`` on a
    malformed value (e.g. TOML quotes copied into ``entry_points.txt``). An ``:attr`` part
    and ``[extras]`` are tolerated and ignored: the manifest names the real entry."""
    module = value.partition(":")[0].partition("[")[0].strip()
    parts = module.split(".")
    return parts if all(p.isidentifier() for p in parts) else None


def _from_record(
    dist: importlib.metadata.Distribution, parts: Sequence[str]
) -> tuple[Path | None, bool]:
    """The package folder holding ``plugin.toml`` according to the distribution's own file
    list, and whether that list mentions the package at all."""
    files = dist.files or []
    prefix = tuple(parts)
    mentioned = False
    for f in files:
        fparts = PurePosixPath(str(f)).parts
        if fparts[: len(prefix)] != prefix:
            continue
        mentioned = True
        if fparts == (*prefix, MANIFEST_FILENAME):
            return Path(str(dist.locate_file(f))).parent, True
    return None, mentioned


def _from_finders(parts: Sequence[str], path: Sequence[str] | None) -> Path | str:
    """Locate a package folder without importing anything: only the top-level name goes to
    the finders (``find_spec`` on ``a.b`` would *execute* ``a/__init__.py``), deeper parts are
    plain subfolders of its search locations. Returns the folder or why there is none."""
    module = ".".join(parts)
    top = parts[0]
    try:
        if path is None:
            spec = importlib.util.find_spec(top)
        else:
            spec = importlib.machinery.PathFinder.find_spec(top, list(path))
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"package {module!r} is not installed"
    if spec.submodule_search_locations is None:
        # A plugin needs a folder for its plugin.toml; a lone module file has none.
        return f"{top!r} is a module, not a package folder that could hold {MANIFEST_FILENAME}"
    for location in spec.submodule_search_locations:
        folder = Path(location).joinpath(*parts[1:])
        if folder.is_dir():
            return folder
    return f"package {module!r} is not installed"


def _locate(
    dist: importlib.metadata.Distribution,
    value: str,
    path: Sequence[str] | None,
) -> Path | str:
    """The folder for the package an entry point's ``value`` names, or why there is none."""
    parts = _module_parts(value)
    if parts is None:
        return "does not name a package (expected e.g. hello = hello_pkg)"
    module = ".".join(parts)
    folder, mentioned = _from_record(dist, parts)
    if folder is None and not mentioned:
        # Editable installs list only a .pth or finder hook, not the package files.
        found = _from_finders(parts, path)
        if isinstance(found, str):
            return found
        folder = found
    if folder is None or not folder.joinpath(MANIFEST_FILENAME).is_file():
        return (
            f"package {module!r} has no {MANIFEST_FILENAME} "
            "(ship it as package data next to the package's __init__.py)"
        )
    return folder.resolve()


def scan_entry_points(path: Sequence[str] | None = None) -> DiscoveryResult:
    """Plugins declared by installed distributions in the ``cordon.plugins`` entry-point
    group. ``path`` is the ``sys.path``-like list to search (default: ``sys.path``); the
    first distribution of a name wins, as for imports. Nothing is imported."""
    search = list(sys.path if path is None else path)
    seen: set[str] = set()
    found: list[tuple[tuple[str, str], Candidate]] = []
    problems: list[tuple[tuple[str, str], Problem]] = []
    for dist in importlib.metadata.distributions(path=search):
        try:
            raw_name = dist.metadata["Name"]
        except Exception:  # a mangled dist-info must not stop discovery of the rest
            raw_name = None
        if not raw_name:
            continue
        key = canonicalize_name(raw_name)
        if key in seen:
            continue
        seen.add(key)
        origin = f"entry-point:{raw_name}"
        try:
            eps = sorted(dist.entry_points.select(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        except Exception as err:
            problems.append(((key, ""), Problem(origin, f"unreadable entry points: {err}")))
            continue
        for ep in eps:
            where = (key, ep.name)
            located = _locate(dist, ep.value, path)
            if isinstance(located, str):
                problems.append(
                    (where, Problem(f"{origin}:{ep.name}", f"entry point {ep.value!r}: {located}"))
                )
            else:
                found.append((where, Candidate(located, origin, ep.name)))
    return DiscoveryResult(
        tuple(c for _, c in sorted(found, key=lambda t: t[0])),
        tuple(p for _, p in sorted(problems, key=lambda t: t[0])),
    )


# -- everything ---------------------------------------------------------------------------------


def discover(
    plugin_dirs: Iterable[str | os.PathLike[str]],
    *,
    entry_points: bool = True,
    path: Sequence[str] | None = None,
    installed: str | os.PathLike[str] | None = None,
) -> DiscoveryResult:
    """Candidates from every directory in ``plugin_dirs`` (in the order given), then from
    installed distributions' entry points (unless ``entry_points=False``; ``path`` as for
    :func:`scan_entry_points`). ``installed``: a state dir whose installed plugins come first
    (see the module's docstring for the precedence).

    The same folder reached twice (a directory listed twice, a symlink, an editable install
    that is also in a plugin dir) is one candidate, from its first source. Different folders
    with the same plugin id all stay: telling the operator about both is the loader's job.
    """
    result = scan_installed(installed) if installed is not None else DiscoveryResult()
    for directory in plugin_dirs:
        result += scan_directory(directory)
    if entry_points:
        result += scan_entry_points(path)
    seen: set[Path] = set()
    unique: list[Candidate] = []
    for cand in result.candidates:
        if cand.path not in seen:
            seen.add(cand.path)
            unique.append(cand)
    return DiscoveryResult(tuple(unique), result.problems)
