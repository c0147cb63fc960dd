"""``cordon plugin sync``: a lock of what is installed, and installing exactly that elsewhere.

The file (``cordon-plugins.lock`` by convention) is JSON, sorted keys, 2-space indent::

    {"format": 1,
     "plugins": [{"id": "hello", "version": "1.2.0", "sha256": "<archive sha256>",
                  "source": "https://.../hello-1.2.0.cordon", "signer": "ed25519:..." | null}]}

Applying it stages each entry from its ``source`` and refuses (before anything is placed) a
package whose id, version or archive sha256 differ from the entry: the sha256 pins the exact
bytes, so a source that now serves something else cannot slip it in. A folder source works when
the folder still packs to the same bytes (packing is reproducible). Entries already installed
with the same sha256 are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from ._errors import ConsentRefused, PackageError, PackageInvalid
from ._install import InstallPlan, commit, discard, stage
from ._lock import IndexOptions
from ._store import InstalledPlugin, installed, list_installed

__all__ = ["SYNC_FORMAT", "SyncEntry", "SyncFile", "read_sync", "sync", "write_sync"]

SYNC_FORMAT: Final = 1
_MAX_SYNC_BYTES: Final = 4 * 1024 * 1024


class SyncEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    version: str
    sha256: str
    source: str
    signer: str | None = None


class SyncFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    plugins: tuple[SyncEntry, ...]


def write_sync(state_dir: Path, path: Path) -> SyncFile:
    entries = tuple(
        SyncEntry(p.plugin_id, p.version, p.sha256, p.source, p.signer)
        for p in list_installed(state_dir)
    )
    doc = SyncFile(SYNC_FORMAT, entries)
    text = json.dumps(msgspec.to_builtins(doc), sort_keys=True, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(path)
    return doc


def read_sync(path: Path) -> SyncFile:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SYNC_BYTES + 1)
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_SYNC_BYTES:
        raise PackageError(f"{path}: larger than {_MAX_SYNC_BYTES} bytes")
    try:
        doc = msgspec.json.decode(data, type=SyncFile, strict=True)
    except msgspec.DecodeError as exc:
        raise PackageError(f"{path}: not a plugin sync file: {exc}") from None
    if doc.format != SYNC_FORMAT:
        raise PackageError(f"{path}: format {doc.format} (this cordon reads {SYNC_FORMAT})")
    return doc


def sync(
    state_dir: Path,
    lockfile: Path,
    *,
    trusted_keys: Sequence[str],
    require_signatures: bool,
    options: IndexOptions,
    consent: Callable[[InstallPlan], bool],
    allow_insecure_localhost: bool = False,
    is_breaking: Callable[[str, str], bool] | None = None,
    progress: bool = False,
) -> list[InstalledPlugin]:
    """Install every entry of ``lockfile`` not already installed with its sha256."""
    doc = read_sync(Path(lockfile))
    done: list[InstalledPlugin] = []
    for entry in doc.plugins:
        have = installed(state_dir, entry.id)
        if have is not None and have.sha256 == entry.sha256:
            done.append(have)
            continue
        plan, staged = stage(
            entry.source,
            state_dir=state_dir,
            trusted_keys=trusted_keys,
            require_signatures=require_signatures,
            options=options,
            allow_insecure_localhost=allow_insecure_localhost,
            is_breaking=is_breaking,
        )
        pkg = staged.package
        got = (pkg.plugin_id, pkg.version, pkg.sha256)
        if got != (entry.id, entry.version, entry.sha256):
            discard(staged)
            raise PackageInvalid(
                path=entry.source,
                reason=f"is {got[0]} {got[1]} sha256 {got[2]}, the sync file pins "
                f"{entry.id} {entry.version} sha256 {entry.sha256}",
            )
        if not consent(plan):
            discard(staged)
            raise ConsentRefused(
                f"{plan.plugin_id}: permissions not accepted",
                plugin=plan.plugin_id,
                permissions=list(plan.added),
            )
        done.append(commit(staged, progress=progress))
    return done
