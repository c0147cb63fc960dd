"""The installed plugins under the state dir, read side.

Layout (written by :mod:`._install`)::

    <state>/plugins/<id>/<version>/       the extracted package (what the worker imports)
    <state>/plugins/<id>/<version>.json   its record: an :class:`InstalledPlugin` as JSON
    <state>/plugins/<id>/.state.json      {"current": <version>, "previous": <version>|null}
    <state>/envs/<key>/                   environments (:mod:`._env`)
    <state>/plugins/.staging/             installs in progress (swept by the next install)

A plugin is installed when ``.state.json``'s ``current`` names a version dir whose record
exists. That one file holds both pointers and is the one thing an install, update or rollback
replaces (temp file, fsync, rename over it), so a SIGKILL at any moment leaves either the old
pair or the new one: never two pointers naming the same version with the other one lost (what
two symlinks swapped one after the other could leave). Its name starts with a dot, so no
version can collide with it.

The reader trusts none of it blindly: a pointer must be a bare sibling version name (never a
path that leads out of ``<state>/plugins/<id>/``), the state file must be a regular file (not
a link), the version dir must be a real directory, and a
record's paths are recomputed from the layout rather than taken from the file. A half-written
state (a link to a version dir that is gone, a missing record) reads as *not installed*, with a
warning naming what is missing; a record that exists but does not parse is a
:class:`PackageError` naming the file, since guessing would run something else.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

import msgspec
import structlog

from .._settings._validate import PLUGIN_ID
from ._errors import PackageError

__all__ = [
    "CURRENT",
    "ENVS",
    "PREVIOUS",
    "STAGING",
    "STATE_FILE",
    "InstalledPlugin",
    "Pointers",
    "installed",
    "installed_at_dir",
    "list_installed",
    "plugins_root",
    "previous",
    "read_installed",
    "read_pointers",
    "record_path",
]

CURRENT: Final = "current"
PREVIOUS: Final = "previous"
#: The plugin's pointers (``{current, previous}``); hidden, so never a version's name.
STATE_FILE: Final = ".state.json"
STAGING: Final = ".staging"
ENVS: Final = "envs"
#: A record is a few hundred bytes; anything larger is not ours.
_MAX_RECORD_BYTES: Final = 64 * 1024

log = structlog.get_logger("cordon")


class InstalledPlugin(msgspec.Struct, frozen=True):
    plugin_id: str
    version: str
    plugin_dir: str  # the version dir (resolved), what the worker imports from
    source: str  # what it was installed from (path, URL, registry id)
    sha256: str  # of the .cordon archive (a folder install: of the package packed from it)
    signer: str | None  # "ed25519:..." when signed and verified
    env_key: str | None  # None: no dependencies
    site_packages: str | None  # the env's site-packages, read-only to the worker
    installed_at: float
    requested: tuple[str, ...]  # permissions the manifest requests


class Pointers(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What ``.state.json`` holds: the active version and the one rollback returns to."""

    current: str
    previous: str | None = None


def plugins_root(state_dir: Path) -> Path:
    return Path(state_dir) / "plugins"


def record_path(state_dir: Path, plugin_id: str, version: str) -> Path:
    return plugins_root(state_dir) / plugin_id / f"{version}.json"


def _version_name(target: str) -> bool:
    # What an install writes: a bare sibling name. Anything with a separator, or ``.``/``..``
    # (or a hidden name), could lead out of the plugin's folder.
    return bool(target) and "/" not in target and "\0" not in target and target[0] != "."


def _read_record(path: Path) -> InstalledPlugin | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PackageError(f"installed record {path} cannot be read: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(_MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise PackageError(f"installed record {path} cannot be read: {exc.strerror}") from exc
    if len(data) > _MAX_RECORD_BYTES:
        raise PackageError(f"installed record {path} is malformed: over {_MAX_RECORD_BYTES} bytes")
    try:
        return msgspec.json.decode(data, type=InstalledPlugin)
    except msgspec.DecodeError as exc:
        raise PackageError(f"installed record {path} is malformed: {exc}") from exc


def _site_packages(state_dir: Path, record: InstalledPlugin, path: Path) -> str | None:
    """The record's site-packages, checked to lie inside its own environment under the state
    dir (the worker is given read access to it: it must be nothing else)."""
    if record.env_key is None:
        if record.site_packages is not None:
            raise PackageError(f"installed record {path} is malformed: site_packages, no env_key")
        return None
    if not _version_name(record.env_key) or record.site_packages is None:
        raise PackageError(f"installed record {path} is malformed: env_key/site_packages")
    env_root = (Path(state_dir) / ENVS / record.env_key).resolve()
    site = Path(record.site_packages).resolve()
    if not site.is_relative_to(env_root):
        raise PackageError(
            f"installed record {path} is malformed: site_packages {record.site_packages!r} "
            f"is not inside its environment {str(env_root)!r}"
        )
    return str(site)


def read_pointers(state_dir: Path, plugin_id: str) -> Pointers | None:
    """``plugin_id``'s ``.state.json``, or ``None`` when there is none (or the folder is not
    one an install made). A pointer that is not a bare version name is dropped with a
    warning: it could lead out of the plugin's folder. A file that does not parse is a
    :class:`PackageError` naming it."""
    if not PLUGIN_ID.fullmatch(plugin_id):
        return None
    root = plugins_root(state_dir) / plugin_id
    if root.is_symlink():
        # An install makes a real folder: a link here would take every path below elsewhere.
        log.warning("installed plugin folder ignored: it is a symlink", plugin=plugin_id)
        return None
    path = root / STATE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PackageError(f"installed state {path} cannot be read: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PackageError(f"installed state {path} is malformed: not a regular file")
            data = f.read(_MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise PackageError(f"installed state {path} cannot be read: {exc.strerror}") from exc
    if len(data) > _MAX_RECORD_BYTES:
        raise PackageError(f"installed state {path} is malformed: over {_MAX_RECORD_BYTES} bytes")
    try:
        ptr = msgspec.json.decode(data, type=Pointers)
    except msgspec.DecodeError as exc:
        raise PackageError(f"installed state {path} is malformed: {exc}") from exc
    for name in (CURRENT, PREVIOUS):
        target = getattr(ptr, name)
        if target is not None and not _version_name(target):
            log.warning(
                "installed plugin pointer ignored: it leads outside the plugin's folder",
                plugin=plugin_id,
                pointer=name,
                target=target,
            )
            if name == CURRENT:
                return None
            ptr = msgspec.structs.replace(ptr, previous=None)
    return ptr


def _read_pointer(state_dir: Path, plugin_id: str, name: str) -> InstalledPlugin | None:
    ptr = read_pointers(state_dir, plugin_id)
    target = getattr(ptr, name) if ptr is not None else None
    if target is None:
        return None
    via = str(plugins_root(state_dir) / plugin_id / STATE_FILE) + f":{name}"
    return _read_version(state_dir, plugin_id, target, via=via)


def _read_version(
    state_dir: Path, plugin_id: str, version: str, *, via: str
) -> InstalledPlugin | None:
    root = plugins_root(state_dir) / plugin_id
    version_dir = root / version
    path = record_path(state_dir, plugin_id, version)
    if not version_dir.is_dir() or version_dir.is_symlink():
        log.warning(
            "installed plugin not usable: its version dir is missing (interrupted install?)",
            plugin=plugin_id,
            via=via,
            missing=str(version_dir),
        )
        return None
    record = _read_record(path)
    if record is None:
        log.warning(
            "installed plugin not usable: its record is missing (interrupted install?)",
            plugin=plugin_id,
            via=via,
            missing=str(path),
        )
        return None
    if record.plugin_id != plugin_id or record.version != version:
        raise PackageError(
            f"installed record {path} is malformed: it describes {record.plugin_id} "
            f"{record.version}, not {plugin_id} {version}"
        )
    site = _site_packages(state_dir, record, path)
    if site is not None and not Path(site).is_dir():
        log.warning(
            "installed plugin not usable: its environment is missing",
            plugin=plugin_id,
            missing=site,
        )
        return None
    # The paths a worker is given come from the layout, not from the file's say-so.
    return msgspec.structs.replace(
        record, plugin_dir=str(version_dir.resolve()), site_packages=site
    )


def installed_at_dir(state_dir: Path, plugin_dir: str | os.PathLike[str]) -> InstalledPlugin | None:
    """The installed version whose version dir ``plugin_dir`` is (current, previous, or one a
    running worker still uses), or ``None`` when ``plugin_dir`` is not in the store: how the
    host finds the environment of the very version a worker runs."""
    folder = Path(plugin_dir).resolve()
    root = plugins_root(state_dir).resolve()
    if folder.parent.parent != root:
        return None
    plugin_id, version = folder.parent.name, folder.name
    if not PLUGIN_ID.fullmatch(plugin_id) or not _version_name(version):
        return None
    return _read_version(state_dir, plugin_id, version, via=str(folder))


def installed(state_dir: Path, plugin_id: str) -> InstalledPlugin | None:
    """The active version of ``plugin_id`` (``.state.json``'s ``current``), or ``None`` when
    it is not installed (or only half: see the module's docstring). A malformed record is a
    :class:`PackageError` naming the file."""
    return _read_pointer(state_dir, plugin_id, CURRENT)


def previous(state_dir: Path, plugin_id: str) -> InstalledPlugin | None:
    """The version ``rollback`` would return to, or ``None``."""
    return _read_pointer(state_dir, plugin_id, PREVIOUS)


def read_installed(state_dir: Path) -> list[tuple[str, InstalledPlugin | PackageError | None]]:
    """Every plugin folder under the store, sorted by id, with its active version, ``None``
    (not, or only half, installed) or the :class:`PackageError` its record is: for listings
    that must show the others when one is broken."""
    root = plugins_root(state_dir)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PackageError(
            f"the installed plugins under {root} cannot be read: {exc.strerror}"
        ) from exc
    out: list[tuple[str, InstalledPlugin | PackageError | None]] = []
    for entry in entries:
        if not PLUGIN_ID.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            out.append((entry.name, installed(state_dir, entry.name)))
        except PackageError as exc:
            out.append((entry.name, exc))
    return out


def list_installed(state_dir: Path) -> list[InstalledPlugin]:
    """Every installed plugin's active version, sorted by id. One malformed record raises
    its :class:`PackageError` (use :func:`read_installed` to list around it)."""
    out: list[InstalledPlugin] = []
    for _, record in read_installed(state_dir):
        if isinstance(record, PackageError):
            raise record
        if record is not None:
            out.append(record)
    return out
