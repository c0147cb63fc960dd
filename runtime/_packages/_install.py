"""Install, update, roll back and uninstall plugins under the state dir.

An install is two steps. :func:`stage` does everything that can fail on the package itself
while changing nothing anyone can see: fetch (or pack a folder), :func:`open_package` (every
hash, every entry), the signature policy, extraction into ``<state>/plugins/.staging/<tmp>/``,
and the :class:`InstallPlan` the operator is asked to consent to. :func:`commit` builds the
environment (:func:`env_for`, atomic on its own), moves the version dir and its record into
place, and then replaces the plugin's ``.state.json`` (``{current, previous}``, see
:mod:`._store`) with one ``rename`` of an fsync'd temp file over it: that rename is the commit
point. A SIGKILL before it leaves the old pointers (or none); after it, the new version is
whole and the old one is ``previous``. :func:`rollback` swaps the two in the same single step,
so no moment exists at which both pointers name one version. What a killed install leaves
(a staging dir, a version dir nothing points at) is swept by the next install. No plugin code
runs: the manifest is read as TOML, the environment is wheels only.

Installs, rollbacks and uninstalls of one state dir are serialised by an ``flock`` on
``<state>/plugins/.lock`` (dropped by the kernel when a holder dies), so a prune never removes
an environment another install has just built. Each staging dir holds its own ``flock`` while
in use: the sweep removes only those whose owner is gone.

Test hook (documented, explicit, inert unless set): ``CORDON_TEST_INSTALL_PAUSE=<point>``
makes the installer, on reaching ``<point>`` (``staged``, ``env-built``, ``before-swap``,
``after-swap``; ``rollback-locked``, ``rollback-before-swap``, ``rollback-after-swap``),
write ``<state>/plugins/.staging/paused-<point>`` and wait there, so a test can SIGKILL it
at exactly that moment.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from ._archive import VerifiedPackage, extract, open_package
from ._env import compile_sources, remove_tree
from ._errors import LockError, NotInstalled, PackageError, PackageInvalid, SignatureInvalid
from ._fetch import check_fresh, fetch_package
from ._lock import IndexOptions
from ._store import (
    STAGING,
    STATE_FILE,
    InstalledPlugin,
    Pointers,
    installed,
    list_installed,
    plugins_root,
    previous,
    read_pointers,
    record_path,
)

__all__ = [
    "PAUSE_ENV",
    "InstallPlan",
    "Staged",
    "commit",
    "discard",
    "rollback",
    "stage",
    "uninstall",
]

PAUSE_ENV: Final = "CORDON_TEST_INSTALL_PAUSE"
#: How long a paused installer waits before giving up (the test kills it long before).
_PAUSE_LIMIT: Final = 120.0
_LOCK_NAME: Final = ".lock"


class InstallPlan(msgspec.Struct, frozen=True):
    plugin_id: str
    version: str
    previous_version: str | None
    breaking: bool
    permissions: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    signer: str | None
    source: str
    dependencies: tuple[str, ...]


@dataclass
class Staged:
    """A verified package extracted under ``.staging``, not yet visible to anyone."""

    state_dir: Path
    plan: InstallPlan
    package: VerifiedPackage
    dir: Path  # the staging dir (removed by commit or discard)
    tree: Path  # the extracted package inside it
    options: IndexOptions
    fd: int  # holds the staging dir's flock while the install is alive


def _pause(state_dir: Path, point: str) -> None:
    if os.environ.get(PAUSE_ENV) != point:
        return
    marker = plugins_root(state_dir) / STAGING / f"paused-{point}"
    marker.write_text(str(os.getpid()))
    deadline = time.monotonic() + _PAUSE_LIMIT
    while time.monotonic() < deadline:  # killed here by the test
        time.sleep(0.05)


@contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    root = plugins_root(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sweep_staging(state_dir: Path) -> None:
    """Remove staging dirs (and pause markers) whose installer is gone: their flock is free."""
    staging = plugins_root(state_dir) / STAGING
    if not staging.is_dir():
        return
    for entry in staging.iterdir():
        if not entry.is_dir() or entry.is_symlink():
            entry.unlink(missing_ok=True)
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # an install in progress
        try:
            remove_tree(entry)
        finally:
            os.close(fd)


def _manifest_fields(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(permissions, dependencies) of a manifest open_package has already validated."""
    plugin = tomllib.loads(text).get("plugin", {})
    perms = plugin.get("permissions", [])
    deps = plugin.get("dependencies", [])
    return (
        tuple(str(p) for p in perms) if isinstance(perms, list) else (),
        tuple(str(d) for d in deps) if isinstance(deps, list) else (),
    )


def _check_signature(
    pkg: VerifiedPackage, source: str, trusted: Sequence[str], required: bool
) -> None:
    # Named by its source (what the operator typed), not the staging copy of a packed folder.
    if not required:
        return
    if pkg.signer is None:
        raise SignatureInvalid(
            f"package {source!r} is not signed, and [runtime] require-signatures = true",
            path=source,
            reason="unsigned",
        )
    if pkg.signer not in trusted:
        raise SignatureInvalid(
            f"package {source!r} is signed by {pkg.signer}, which is not in [runtime] trusted-keys",
            path=source,
            key=pkg.signer,
            reason="untrusted key",
        )


def _default_breaking(old: str, new: str) -> bool:
    from packaging.version import Version

    return Version(old).major != Version(new).major


def stage(
    source: str,
    *,
    state_dir: Path,
    trusted_keys: Sequence[str],
    require_signatures: bool,
    options: IndexOptions,
    allow_insecure_localhost: bool = False,
    is_breaking: Callable[[str, str], bool] | None = None,
) -> tuple[InstallPlan, Staged]:
    """Fetch, verify and extract ``source`` into a staging dir; nothing visible changes.
    ``is_breaking``: :func:`cordon.runtime.versions.is_breaking` (passed in by the CLI: this
    room may not import the platform's)."""
    state_dir = Path(state_dir).absolute()
    staging_root = plugins_root(state_dir) / STAGING
    staging_root.mkdir(parents=True, exist_ok=True)
    sweep_staging(state_dir)
    work = Path(tempfile.mkdtemp(prefix="install-", dir=staging_root))
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        path, recorded = fetch_package(
            source, work, options, allow_insecure_localhost=allow_insecure_localhost
        )
        pkg = open_package(path)
        _check_signature(pkg, recorded, trusted_keys, require_signatures)
        permissions, deps = _manifest_fields(pkg.manifest_text)
        try:
            check_fresh(recorded, deps, pkg.lock)
        except LockError as exc:
            raise PackageInvalid(path=recorded, entry="plugin.lock", reason=exc.message) from None
        tree = work / "tree"
        extract(pkg, tree)
        # Workers may not write bytecode beside the plugin's sources: compiled here, once
        # (the archive itself may hold none: an unchecked .pyc would run instead of them).
        compile_sources(tree, plugins_root(state_dir).resolve() / pkg.plugin_id / pkg.version)
        prev = installed(state_dir, pkg.plugin_id)
        breaking = False
        if prev is not None and prev.version != pkg.version:
            breaking = (is_breaking or _default_breaking)(prev.version, pkg.version)
        old = set(prev.requested) if prev is not None else set()
        plan = InstallPlan(
            plugin_id=pkg.plugin_id,
            version=pkg.version,
            previous_version=prev.version if prev is not None else None,
            breaking=breaking,
            permissions=permissions,
            added=tuple(sorted(set(permissions) - old)) if prev is not None else permissions,
            removed=tuple(sorted(old - set(permissions))),
            signer=pkg.signer,
            source=recorded,
            dependencies=deps,
        )
        staged = Staged(state_dir, plan, pkg, work, tree, options, fd)
        _pause(state_dir, "staged")
        return plan, staged
    except BaseException:
        remove_tree(work)
        os.close(fd)
        raise


def discard(staged: Staged) -> None:
    """Forget a staged install (the operator said no): its staging dir goes."""
    try:
        remove_tree(staged.dir)
    finally:
        if staged.fd >= 0:
            os.close(staged.fd)
            staged.fd = -1


def _set_pointers(root: Path, current: str, previous: str | None) -> None:
    """Replace ``root/.state.json`` with one rename of an fsync'd temp file: a reader (or the
    next operation after a SIGKILL) sees the old pair or the new one, nothing in between."""
    tmp = root / f"{STATE_FILE}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(Pointers(current=current, previous=previous)))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, root / STATE_FILE)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_record(path: Path, record: InstalledPlugin) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(record))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _referenced(state_dir: Path, plugin_id: str) -> set[str]:
    ptr = read_pointers(state_dir, plugin_id)
    if ptr is None:
        return set()
    return {v for v in (ptr.current, ptr.previous) if v is not None}


def _tidy(state_dir: Path, plugin_id: str, in_use: Collection[str] = ()) -> None:
    """Remove version dirs and records neither ``current`` nor ``previous`` names (nor
    ``in_use``: versions a running host reports it still runs from), then the environments no
    kept version (of any plugin) uses."""
    from ._env import prune_envs

    root = plugins_root(state_dir) / plugin_id
    kept_envs: set[str] = set()
    if root.is_dir():
        keep = _referenced(state_dir, plugin_id) | set(in_use)
        for entry in root.iterdir():
            if entry.name == STATE_FILE:
                continue
            version = entry.name[: -len(".json")] if entry.name.endswith(".json") else entry.name
            if version.startswith(".") or version not in keep:
                remove_tree(entry)
        for version in set(in_use) - _referenced(state_dir, plugin_id):
            rec = _record(record_path(state_dir, plugin_id, version))
            if rec is not None and rec.env_key:
                kept_envs.add(rec.env_key)
    keys = kept_envs
    plugins = plugins_root(state_dir)
    if plugins.is_dir():
        for p in plugins.iterdir():
            if not p.is_dir() or p.name.startswith("."):
                continue
            try:
                records = (installed(state_dir, p.name), previous(state_dir, p.name))
            except PackageError:
                # A record we cannot read may name an env still in use: prune nothing rather
                # than delete what a plugin runs from (the next clean install prunes).
                return
            keys |= {r.env_key for r in records if r is not None and r.env_key}
    prune_envs(state_dir / "envs", keys)


def commit(
    staged: Staged, *, progress: bool = False, in_use: Collection[str] = ()
) -> InstalledPlugin:
    """Build the environment, place the version, make it ``current``; keep the old as
    ``previous``. Consumes ``staged`` (its staging dir is gone afterwards). ``in_use``: versions
    of this plugin a running host still runs from, which the tidy after it must keep."""
    from ._env import env_for

    state_dir, pkg = staged.state_dir, staged.package
    try:
        with _state_lock(state_dir):
            env = None
            if pkg.lock is not None and pkg.lock.wheels:
                env = env_for(
                    pkg.lock,
                    envs_root=state_dir / "envs",
                    cache_dir=state_dir / "uv-cache",
                    options=staged.options,
                    progress=progress,
                )
            _pause(state_dir, "env-built")
            root = plugins_root(state_dir) / pkg.plugin_id
            root.mkdir(parents=True, exist_ok=True)
            version_dir = root / pkg.version
            rec_path = record_path(state_dir, pkg.plugin_id, pkg.version)
            ptr = read_pointers(state_dir, pkg.plugin_id)
            refs = _referenced(state_dir, pkg.plugin_id)
            if pkg.version in refs:
                # Versions are immutable once installed: the same bytes are a no-op; other
                # bytes under the same version would change code under a running host.
                old = _record(rec_path)
                if old is None or old.sha256 != pkg.sha256:
                    raise PackageInvalid(
                        path=pkg.path,
                        reason=f"{pkg.plugin_id} {pkg.version} is already installed with other "
                        "content; publish it under a new version",
                    )
            else:
                remove_tree(version_dir)  # an orphan of a killed install: nothing points at it
                os.rename(staged.tree, version_dir)
                _fsync_dir(root)
            record = InstalledPlugin(
                plugin_id=pkg.plugin_id,
                version=pkg.version,
                plugin_dir=str(version_dir.resolve()),
                source=staged.plan.source,
                sha256=pkg.sha256,
                signer=pkg.signer,
                env_key=env.key if env is not None else None,
                site_packages=env.site_packages if env is not None else None,
                installed_at=time.time(),
                requested=staged.plan.permissions,
            )
            _write_record(rec_path, record)
            _pause(state_dir, "before-swap")
            current = ptr.current if ptr is not None else None
            if current != pkg.version:
                # The old version becomes ``previous`` (if it is still whole) in the same
                # write that makes the new one current: the commit point.
                keep = current if current is not None and (root / current).is_dir() else None
                _set_pointers(root, pkg.version, keep)
                _pause(state_dir, "after-swap")
            _tidy(state_dir, pkg.plugin_id, in_use)
    finally:
        discard(staged)
    return record


def _record(path: Path) -> InstalledPlugin | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=InstalledPlugin)
    except (OSError, msgspec.DecodeError):
        return None


def rollback(state_dir: Path, plugin_id: str) -> InstalledPlugin:
    """Swap ``current`` and ``previous``: the version before the last update is active again
    (and the one it replaces becomes ``previous``, so a second rollback undoes the first).
    The swap is one write of ``.state.json``: killed at any moment, the pair is the old one
    or the swapped one."""
    state_dir = Path(state_dir).absolute()
    with _state_lock(state_dir):
        _pause(state_dir, "rollback-locked")
        cur, prev = installed(state_dir, plugin_id), previous(state_dir, plugin_id)
        if prev is None:
            raise NotInstalled(
                f"{plugin_id} has no previous version to roll back to", plugin=plugin_id
            )
        root = plugins_root(state_dir) / plugin_id
        _pause(state_dir, "rollback-before-swap")
        _set_pointers(root, prev.version, cur.version if cur is not None else None)
        _pause(state_dir, "rollback-after-swap")
    return prev


def uninstall(state_dir: Path, plugin_id: str, *, purge: bool) -> None:
    """Remove ``plugin_id`` (all its versions) and the environments nothing else uses;
    ``purge`` also deletes its storage keys."""
    state_dir = Path(state_dir).absolute()
    with _state_lock(state_dir):
        if installed(state_dir, plugin_id) is None:
            raise NotInstalled(f"{plugin_id} is not installed", plugin=plugin_id)
        root = plugins_root(state_dir) / plugin_id
        staging = plugins_root(state_dir) / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        # One rename takes it out of sight (the commit point); the tree is deleted after.
        gone = Path(tempfile.mkdtemp(prefix="uninstall-", dir=staging))
        os.rename(root, gone / plugin_id)
        _fsync_dir(root.parent)
        remove_tree(gone)
        _tidy(state_dir, plugin_id)
        if purge:
            _purge_storage(state_dir, plugin_id)


def _purge_storage(state_dir: Path, plugin_id: str) -> None:
    """Delete the plugin's namespace from the host's storage database (the schema of
    ``_hostapi/_storage.py``: ``kv(ns, ...)`` and ``usage(ns, ...)``, ns ``plugin:<id>``)."""
    import sqlite3

    db = state_dir / "storage.db"
    if not db.exists():
        return
    ns = f"plugin:{plugin_id}"
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM kv WHERE ns = ?", (ns,))
        conn.execute("DELETE FROM usage WHERE ns = ?", (ns,))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise PackageError(f"cannot purge {plugin_id}'s storage in {db}: {exc}") from None
    finally:
        conn.close()


def installed_ids(state_dir: Path) -> list[str]:
    return [p.plugin_id for p in list_installed(state_dir)]
