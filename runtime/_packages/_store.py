"""The installed plugins under the state dir, read side.

Layout (written by :mod:`._install`)::

    <state>/plugins/<id>/<version>/       the extracted package (what the worker imports)
    <state>/plugins/<id>/<version>.json   its record: an :class:`InstalledPlugin` as JSON
    <state>/plugins/<id>/current          symlink to the active version dir
    <state>/plugins/<id>/previous         symlink to the version rollback returns to
    <state>/envs/<key>/                   environments (:mod:`._env`)
    <state>/plugins/.staging/             installs in progress (swept by the next install)

A plugin is installed when ``current`` resolves to a version dir whose record exists: that
symlink is the one thing an install swaps, so whatever a reader finds is a whole version.
(A first version by the install engineer, to the contract's read API; the runtime-integration
engineer owns this module.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import msgspec

__all__ = [
    "CURRENT",
    "PREVIOUS",
    "STAGING",
    "InstalledPlugin",
    "installed",
    "list_installed",
    "plugins_root",
    "previous",
    "record_path",
]

CURRENT: Final = "current"
PREVIOUS: Final = "previous"
STAGING: Final = ".staging"
#: A record is a few hundred bytes; anything larger is not ours.
_MAX_RECORD_BYTES: Final = 64 * 1024


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


def plugins_root(state_dir: Path) -> Path:
    return Path(state_dir) / "plugins"


def record_path(state_dir: Path, plugin_id: str, version: str) -> Path:
    return plugins_root(state_dir) / plugin_id / f"{version}.json"


def _read_link(state_dir: Path, plugin_id: str, name: str) -> InstalledPlugin | None:
    if not plugin_id or "/" in plugin_id or plugin_id.startswith("."):
        return None
    link = plugins_root(state_dir) / plugin_id / name
    try:
        target = os.readlink(link)
    except OSError:
        return None
    # The link names a sibling version dir; anything else was not written by an install.
    if "/" in target or target.startswith("."):
        return None
    path = record_path(state_dir, plugin_id, target)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_RECORD_BYTES + 1)
        record = msgspec.json.decode(data, type=InstalledPlugin)
    except (OSError, msgspec.DecodeError):
        return None
    if record.plugin_id != plugin_id or record.version != target:
        return None
    if not (plugins_root(state_dir) / plugin_id / target).is_dir():
        return None
    return record


def installed(state_dir: Path, plugin_id: str) -> InstalledPlugin | None:
    """The active version of ``plugin_id`` (through ``current``), or ``None``."""
    return _read_link(state_dir, plugin_id, CURRENT)


def previous(state_dir: Path, plugin_id: str) -> InstalledPlugin | None:
    """The version ``rollback`` would return to, or ``None``."""
    return _read_link(state_dir, plugin_id, PREVIOUS)


def list_installed(state_dir: Path) -> list[InstalledPlugin]:
    """Every installed plugin's active version, sorted by id."""
    root = plugins_root(state_dir)
    if not root.is_dir():
        return []
    found = (installed(state_dir, p.name) for p in sorted(root.iterdir()) if p.is_dir())
    return [p for p in found if p is not None]
