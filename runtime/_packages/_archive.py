"""The ``.cordon`` package: one zip holding a plugin's manifest, code, lock and a list of every
file with its sha256 (``CORDON-FILES.json``), optionally signed (``CORDON-SIGNATURE.json``, an
Ed25519 signature of the list's bytes).

:func:`pack` writes it reproducibly: sorted entries, fixed timestamps and attributes, one
compression level, no extra fields, so the same folder gives the same bytes on any machine
with the same zlib. :func:`open_package` is the only way in: it checks *everything* (names,
types, counts, decompressed sizes, hashes, the manifest, the lock, the signature) while writing
nothing anywhere, and :func:`extract` writes only bytes whose hash it has just checked again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Final

import msgspec

from .._errors import ManifestError
from .._settings._manifest import (
    MANIFEST_FILENAME,
    MAX_MANIFEST_BYTES,
    load_manifest,
    parse_manifest,
)
from ._errors import LockError, PackageInvalid, SignatureInvalid
from ._extract import extract
from ._lock import LOCK_FILENAME, Lock, check_lock
from ._reader import ArchiveReader, MiB, check_entry, read_entry
from ._safety import entry_name_problem, find_collision

__all__ = [
    "FILES_NAME",
    "PACKAGE_SUFFIX",
    "SIGNATURE_NAME",
    "PackageFile",
    "PackageLimits",
    "VerifiedPackage",
    "extract",
    "open_package",
    "pack",
]

PACKAGE_SUFFIX: Final = ".cordon"
FILES_NAME: Final = "CORDON-FILES.json"
SIGNATURE_NAME: Final = "CORDON-SIGNATURE.json"
_META: Final = (FILES_NAME, SIGNATURE_NAME)

#: 1980-01-01 00:00:00, the earliest time a zip can store: no build clock leaks into the bytes.
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
#: zlib's level; fixed because another level gives other bytes. 9: packages are written once
#: and read many times, and the time is negligible at plugin sizes.
_COMPRESSLEVEL: Final = 9
_MODES: Final = (0o644, 0o755)
#: Bounds on the metadata entries, read before anything is hashed: a file list of 5000 paths
#: is ~1 MiB; a signature is two short strings; a lock of a few hundred wheels is ~100 KiB.
_MAX_FILES_LIST_BYTES: Final = 8 * MiB
_MAX_SIGNATURE_BYTES: Final = 4096
_MAX_LOCK_BYTES: Final = 4 * MiB


class PackageLimits(msgspec.Struct, frozen=True):
    """What an archive may hold, counted in *uncompressed* bytes actually produced (never the
    sizes its headers claim)."""

    max_files: int = 5000
    max_file_bytes: int = 64 * MiB
    max_total_bytes: int = 256 * MiB


DEFAULT_LIMITS: Final = PackageLimits()


class PackageFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    sha256: str
    size: int
    mode: int


class VerifiedPackage(msgspec.Struct, frozen=True):
    path: str
    plugin_id: str
    version: str
    manifest_text: str
    files: tuple[PackageFile, ...]
    lock: Lock | None
    #: ``"ed25519:<b64>"`` when signed and the signature verifies; whether that key is trusted
    #: is the installer's decision.
    signer: str | None
    #: Of the whole archive file.
    sha256: str


class _Signature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    signature: str


# -- pack ----------------------------------------------------------------------------------------


def _skipped(name: str, is_dir: bool) -> bool:
    # Caches and hidden files (.git, .venv, editor droppings) are the packer's machine, not
    # the plugin.
    return name.startswith(".") or (is_dir and name == "__pycache__") or name.endswith(".pyc")


def _collect(root: Path, out_dir: Path, limits: PackageLimits) -> list[str]:
    """The plugin's files as sorted relative POSIX paths. A symlink or special file is an
    error naming it: following it would pack whatever it points at on the packer's machine."""
    found: list[str] = []

    def refuse(rel: str, reason: str) -> PackageInvalid:
        return PackageInvalid(path=str(root), entry=rel, reason=reason)

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            if folder == out_dir and entry.name.endswith(PACKAGE_SUFFIX):
                continue  # `pack . -o dist` (or `-o .`): never pack earlier packages
            if entry.is_symlink():
                if _skipped(entry.name, is_dir=False):
                    continue
                raise refuse(rel, "symbolic link (a package holds regular files only)")
            is_dir = entry.is_dir(follow_symlinks=False)
            if _skipped(entry.name, is_dir):
                continue
            problem = entry_name_problem(rel)
            if problem is not None:  # a name open_package would refuse: say so now
                raise refuse(rel, problem)
            if is_dir:
                walk(Path(entry.path), rel + "/")
            elif entry.is_file(follow_symlinks=False):
                if rel in _META:
                    raise refuse(rel, "this name is reserved for the package's own metadata")
                found.append(rel)
                if len(found) > limits.max_files:
                    raise refuse(rel, f"more than {limits.max_files} files")
            else:
                raise refuse(rel, "not a regular file or directory (device, FIFO or socket)")

    walk(root, "")
    collision = find_collision(found)
    if collision is not None:
        raise refuse(collision[1], f"collides with {collision[0]!r} on a case-insensitive disk")
    return sorted(found)


def _read_plugin_file(root: Path, rel: str, limits: PackageLimits) -> tuple[bytes, int]:
    fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PackageInvalid(path=str(root), entry=rel, reason="not a regular file")
        data = f.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        raise PackageInvalid(
            path=str(root), entry=rel, reason=f"larger than {limits.max_file_bytes} bytes"
        )
    return data, 0o755 if st.st_mode & 0o111 else 0o644


def _zip_entry(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix: the high bits of external_attr are st_mode
    info.external_attr = (stat.S_IFREG | mode) << 16
    return info


def _files_list_bytes(files: list[PackageFile]) -> bytes:
    """The canonical bytes of ``CORDON-FILES.json`` (what a signature covers)."""
    body = [msgspec.to_builtins(f) for f in sorted(files, key=lambda f: f.path)]
    return (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()


def pack(plugin_dir: Path, out_dir: Path, *, signing_key: Path | None = None) -> Path:
    """Write ``<id>-<version>.cordon`` for the plugin in ``plugin_dir`` into ``out_dir``
    (atomically) and return its path. The result is checked with :func:`open_package` before
    it replaces anything: pack never writes a package install would refuse."""
    from ._keys import sign

    limits = DEFAULT_LIMITS
    root = Path(plugin_dir).resolve()
    manifest = load_manifest(root)  # a broken manifest is its ManifestError
    out = Path(out_dir).resolve()
    names = _collect(root, out, limits)
    if MANIFEST_FILENAME not in names:  # pragma: no cover - load_manifest read it
        raise PackageInvalid(path=str(root), entry=MANIFEST_FILENAME, reason="missing")
    contents: dict[str, bytes] = {}
    files: list[PackageFile] = []
    total = 0
    for rel in names:
        data, mode = _read_plugin_file(root, rel, limits)
        total += len(data)
        if total > limits.max_total_bytes:
            raise PackageInvalid(
                path=str(root), entry=rel, reason=f"more than {limits.max_total_bytes} bytes"
            )
        contents[rel] = data
        files.append(PackageFile(rel, hashlib.sha256(data).hexdigest(), len(data), mode))
    listing = _files_list_bytes(files)
    meta = {FILES_NAME: listing}
    if signing_key is not None:
        key, signature = sign(listing, Path(signing_key))
        sig = msgspec.to_builtins(_Signature(key=key, signature=signature))
        meta[SIGNATURE_NAME] = (json.dumps(sig, sort_keys=True, indent=2) + "\n").encode()
    modes = {f.path: f.mode for f in files}
    entries = sorted([*contents.items(), *meta.items()])

    target = out / f"{manifest.id}-{manifest.version}{PACKAGE_SUFFIX}"
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=_COMPRESSLEVEL) as z:
                for name, data in entries:
                    info = _zip_entry(name, modes.get(name, 0o644))
                    z.writestr(info, data, compresslevel=_COMPRESSLEVEL)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            open_package(tmp, limits)
        except (PackageInvalid, SignatureInvalid) as exc:
            reason = getattr(exc, "reason", None) or exc.message
            raise PackageInvalid(
                path=str(root), entry=getattr(exc, "entry", None), reason=reason
            ) from exc
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# -- open ----------------------------------------------------------------------------------------


def _parse_files_list(reader: ArchiveReader, data: bytes) -> list[PackageFile]:
    try:
        files = msgspec.json.decode(data, type=list[PackageFile], strict=True)
    except msgspec.DecodeError as exc:
        raise reader.refuse(FILES_NAME, f"not a valid file list: {exc}") from None
    seen: set[str] = set()
    for f in files:
        problem = entry_name_problem(f.path)
        if problem is not None:
            raise reader.refuse(f.path, f"listed in {FILES_NAME}: {problem}")
        if f.path in seen or f.path in _META:
            raise reader.refuse(f.path, f"listed twice (or a reserved name) in {FILES_NAME}")
        seen.add(f.path)
        if len(f.sha256) != 64 or f.sha256.strip("0123456789abcdef"):
            raise reader.refuse(f.path, f"{FILES_NAME} gives no lowercase hex sha256")
        if f.size < 0:
            raise reader.refuse(f.path, f"{FILES_NAME} gives a negative size")
        if f.mode not in _MODES:
            raise reader.refuse(f.path, f"mode {f.mode:#o} is not 0o644 or 0o755")
    if [f.path for f in files] != sorted(seen):
        raise reader.refuse(FILES_NAME, "not sorted by path")
    return files


def _parse_manifest(reader: ArchiveReader, data: bytes, names: set[str]) -> tuple[str, str, str]:
    def invalid(why: str) -> PackageInvalid:
        return reader.refuse(MANIFEST_FILENAME, f"invalid manifest: {why}")

    try:
        text = data.decode("utf-8")
        manifest = parse_manifest(tomllib.loads(text), directory=None, source=MANIFEST_FILENAME)
    except UnicodeDecodeError as exc:
        raise invalid(f"not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise invalid(f"invalid TOML: {exc}") from None
    except ManifestError as exc:
        raise invalid("; ".join(str(p) for p in exc.problems)) from exc
    # The entry module must be in the package, relative to its root: the installed folder is
    # named after the version, so the folder-name-as-package form cannot resolve there.
    below = "/".join(manifest.entry_module.split("."))
    if f"{below}.py" not in names and f"{below}/__init__.py" not in names:
        raise invalid(
            f"plugin.entry: module {manifest.entry_module!r} is not in the package "
            f"(looked for {below}.py and {below}/__init__.py)"
        )
    return manifest.id, manifest.version, text


def _parse_lock(reader: ArchiveReader, data: bytes) -> Lock:
    try:
        lock = msgspec.json.decode(data, type=Lock, strict=True)
        check_lock(Path(LOCK_FILENAME), lock)
    except msgspec.DecodeError as exc:
        raise reader.refuse(LOCK_FILENAME, f"the lock does not parse: {exc}") from None
    except LockError as exc:
        raise reader.refuse(LOCK_FILENAME, f"the lock does not parse: {exc.message}") from exc
    return lock


def _check_signature(reader: ArchiveReader, data: bytes, listing: bytes) -> str:
    from ._keys import load_public, verify

    def invalid(why: str, key: str | None = None) -> SignatureInvalid:
        return SignatureInvalid(path=reader.label, key=key, reason=why)

    try:
        sig = msgspec.json.decode(data, type=_Signature, strict=True)
    except msgspec.DecodeError as exc:
        raise invalid(f"{SIGNATURE_NAME} is malformed: {exc}") from None
    try:
        key = load_public(sig.key)
    except SignatureInvalid as exc:
        raise invalid(f"{SIGNATURE_NAME} names no valid key: {exc.reason}") from None
    if not verify(listing, key, sig.signature):
        raise invalid(f"the signature does not verify against {FILES_NAME}", key)
    return key


def open_package(path: Path, limits: PackageLimits = DEFAULT_LIMITS) -> VerifiedPackage:
    """Check every entry of the archive at ``path``, writing nothing anywhere. Raises
    :class:`PackageInvalid` naming the entry and the reason, or :class:`SignatureInvalid`."""
    with ArchiveReader.open(Path(path), limits.max_files + len(_META), _archive_bound(limits)) as r:
        infos = r.zip.infolist()
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            check_entry(r, info)
            if info.orig_filename in by_name:
                raise r.refuse(info.orig_filename, "duplicate name")
            by_name[info.orig_filename] = info
            if info.file_size > limits.max_file_bytes:
                raise r.refuse(info.orig_filename, f"larger than {limits.max_file_bytes} bytes")
        if len(by_name.keys() - set(_META)) > limits.max_files:
            raise r.refuse(None, f"more than {limits.max_files} files")
        collision = find_collision(by_name)
        if collision is not None:
            first, second = collision
            raise r.refuse(second, f"collides with {first!r} (case or Unicode normalisation)")
        if FILES_NAME not in by_name:
            raise r.refuse(FILES_NAME, "missing: not a cordon package")
        budget = [limits.max_total_bytes]
        listing = read_entry(
            r, by_name[FILES_NAME], min(_MAX_FILES_LIST_BYTES, limits.max_file_bytes), budget
        )[0]
        files = _parse_files_list(r, listing)
        listed = {f.path: f for f in files}
        for name in sorted(by_name.keys() - listed.keys() - set(_META)):
            raise r.refuse(name, f"not listed in {FILES_NAME}")
        for name in sorted(listed.keys() - by_name.keys()):
            raise r.refuse(name, f"listed in {FILES_NAME} but missing from the archive")
        kept: dict[str, bytes] = {}
        small = {MANIFEST_FILENAME: MAX_MANIFEST_BYTES, LOCK_FILENAME: _MAX_LOCK_BYTES}
        for f in files:
            cap = min(limits.max_file_bytes, small.get(f.path, limits.max_file_bytes))
            data, digest, size = read_entry(r, by_name[f.path], cap, budget, keep=f.path in small)
            if size != f.size:
                raise r.refuse(f.path, f"{size} bytes, {FILES_NAME} says {f.size}")
            if digest != f.sha256:
                raise r.refuse(f.path, f"sha256 {digest} does not match {FILES_NAME}")
            if f.path in small:
                kept[f.path] = data
        if MANIFEST_FILENAME not in kept:
            raise r.refuse(MANIFEST_FILENAME, "missing: a package needs its manifest")
        plugin_id, version, text = _parse_manifest(r, kept[MANIFEST_FILENAME], set(listed))
        lock = _parse_lock(r, kept[LOCK_FILENAME]) if LOCK_FILENAME in kept else None
        signer = None
        if SIGNATURE_NAME in by_name:
            raw = read_entry(r, by_name[SIGNATURE_NAME], _MAX_SIGNATURE_BYTES, budget)[0]
            signer = _check_signature(r, raw, listing)
        return VerifiedPackage(
            path=str(Path(path).resolve()),
            plugin_id=plugin_id,
            version=version,
            manifest_text=text,
            files=tuple(files),
            lock=lock,
            signer=signer,
            sha256=r.sha256,
        )


def _archive_bound(limits: PackageLimits) -> int:
    """The largest archive file worth reading: the uncompressed budget (stored entries) plus
    generous per-entry header room. A bigger file is refused before it is hashed."""
    return limits.max_total_bytes + (limits.max_files + len(_META)) * 4096 + 16 * MiB
