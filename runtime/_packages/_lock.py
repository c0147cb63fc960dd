"""The lock: a plugin's dependencies resolved by ``uv`` into exact versions and, for each, the
one wheel file this interpreter and platform install, pinned by its sha256.

Wheels only: a source distribution would have to be built, and building runs its code on the
host, so a dependency with no usable wheel is :class:`SdistOnly`, naming it.

Choosing the wheel. ``uv pip compile --format pylock.toml`` lists, per pinned version, every
wheel the index offers with its hash (PEP 751). Of those, the lock keeps the wheel an installer
on this interpreter picks: the one whose tags rank first in ``packaging.tags.sys_tags()``,
the same priority order pip and uv use. This is deterministic, needs no download (hashes come
from the index, or from uv hashing the ``--find-links`` files), and it pins one file, so the
environment's ``--require-hashes`` install accepts exactly that file and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ._errors import LockError, SdistOnly
from ._uv import UvTimeout, redact, run_uv

__all__ = [
    "LOCK_FILENAME",
    "LOCK_TIMEOUT",
    "IndexOptions",
    "Lock",
    "LockedWheel",
    "check_lock",
    "current_platform",
    "current_python",
    "index_args",
    "lock_requirements",
    "read_lock",
    "write_lock",
]

LOCK_FILENAME = "plugin.lock"
LOCK_FORMAT = 1

#: ``uv pip compile`` against a real index fetches metadata for every candidate; a large tree on
#: a slow index takes a minute. Five is generous and still ends a hung connection.
LOCK_TIMEOUT = 300.0

_SHA256 = re.compile(r"[0-9a-f]{64}")


class IndexOptions(msgspec.Struct, frozen=True):
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    offline: bool = False


class LockedWheel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str  # canonical (packaging.utils.canonicalize_name)
    version: str
    filename: str  # the wheel's file name
    sha256: str  # hex


class Lock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int = LOCK_FORMAT
    python: str = ""  # e.g. "3.11": the interpreter the lock was made for
    platform: str = ""  # e.g. "linux-x86_64"
    requirements: tuple[str, ...] = ()  # the manifest's dependencies, as written
    wheels: tuple[LockedWheel, ...] = ()  # sorted by name

    def content_hash(self) -> str:
        """sha256 hex of the canonical JSON of what decides the environment: the interpreter,
        the platform and the exact wheels (not the requirements as written: two spellings
        resolving to the same wheels share one environment)."""
        body = {
            "python": self.python,
            "platform": self.platform,
            "wheels": [msgspec.to_builtins(w) for w in self.wheels],
        }
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canon.encode()).hexdigest()


def current_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def current_platform() -> str:
    return sysconfig.get_platform()


def index_args(options: IndexOptions) -> list[str]:
    """The index options as uv arguments. With find-links and no index URL, only the
    wheelhouse is consulted (``--no-index``): a wheelhouse given is a wheelhouse meant."""
    args: list[str] = []
    if options.index_url:
        args += ["--index-url", options.index_url]
    elif options.find_links:
        args.append("--no-index")
    for link in options.find_links:
        # uv runs in a scratch dir: a relative wheelhouse path means the caller's cwd.
        args += ["--find-links", link if "://" in link else os.path.abspath(link)]
    if options.offline:
        args.append("--offline")
    return args


def lock_requirements(requirements: Sequence[str], options: IndexOptions) -> Lock:
    """Resolve ``requirements`` (PEP 508) for this interpreter and platform with ``uv``, wheels
    only. Raises :class:`SdistOnly` naming a dependency that has no usable wheel, and
    :class:`LockError` with uv's reason when the set cannot be resolved."""
    reqs = tuple(requirements)
    if not reqs:
        return Lock(python=current_python(), platform=current_platform(), requirements=())
    with tempfile.TemporaryDirectory(prefix="cordon-lock-") as tmp:
        work = Path(tmp)
        req_in = work / "requirements.in"
        req_in.write_text("".join(f"{r}\n" for r in reqs), encoding="utf-8")
        args = [
            "pip",
            "compile",
            str(req_in),
            "--python",
            sys.executable,
            "--only-binary",
            ":all:",
            "--generate-hashes",
            "--format",
            "pylock.toml",
            "--no-header",
            "--quiet",
            *index_args(options),
        ]
        try:
            # A throwaway cache: resolution reads metadata; the install has its own cache.
            result = run_uv(args, cache_dir=work / "cache", timeout=LOCK_TIMEOUT, cwd=work)
        except UvTimeout as exc:
            raise LockError(str(exc), detail=str(exc)) from None
    if result.returncode != 0:
        _raise_resolution_error(result.stderr or result.stdout)
    wheels = _pick_wheels(result.stdout)
    return Lock(
        python=current_python(),
        platform=current_platform(),
        requirements=reqs,
        wheels=tuple(sorted(wheels, key=lambda w: w.name)),
    )


_NO_WHEEL = (
    re.compile(r"Wheels are required for `([^`]+)`"),
    re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==\S+ has no usable wheels"),
)


def _raise_resolution_error(output: str) -> None:
    detail = redact(output)
    for pattern in _NO_WHEEL:
        if m := pattern.search(output):
            raise SdistOnly(requirement=m.group(1), detail=detail)
    raise LockError(f"the dependencies cannot be resolved: {detail}", detail=detail)


def _pick_wheels(pylock: str) -> list[LockedWheel]:
    from packaging.tags import sys_tags
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    try:
        doc = tomllib.loads(pylock)
    except tomllib.TOMLDecodeError as exc:
        raise LockError(
            f"uv's resolution is not valid TOML: {exc}", detail=redact(pylock)
        ) from None
    rank = {tag: i for i, tag in enumerate(sys_tags())}
    picked: list[LockedWheel] = []
    for pkg in doc.get("packages", []):
        name = canonicalize_name(str(pkg.get("name", "")))
        version = str(pkg.get("version", ""))
        best: tuple[int, str, str] | None = None
        for wheel in pkg.get("wheels", []):
            filename = _wheel_filename(wheel)
            try:
                _, _, _, tags = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                continue
            score = min((rank[t] for t in tags if t in rank), default=None)
            sha = str(wheel.get("hashes", {}).get("sha256", ""))
            if score is not None and _SHA256.fullmatch(sha) and (best is None or score < best[0]):
                best = (score, filename, sha)
        if best is None:
            # Resolved but no wheel of this version fits here (or none came with a sha256).
            raise SdistOnly(requirement=f"{name}=={version}", detail=redact(pylock))
        picked.append(LockedWheel(name=name, version=version, filename=best[1], sha256=best[2]))
    return picked


def _wheel_filename(wheel: dict[str, Any]) -> str:
    if name := wheel.get("name"):
        return str(name)
    where = str(wheel.get("url") or wheel.get("path") or "")
    return where.rsplit("/", 1)[-1].split("#", 1)[0]


# -- the file -------------------------------------------------------------------------------------


def write_lock(plugin_dir: Path, lock: Lock) -> Path:
    """Write ``plugin.lock`` (JSON, sorted keys, 2-space indent, final newline) atomically."""
    path = plugin_dir / LOCK_FILENAME
    text = json.dumps(msgspec.to_builtins(lock), sort_keys=True, indent=2, ensure_ascii=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILENAME}.", dir=plugin_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_lock(plugin_dir: Path) -> Lock | None:
    """The plugin's lock, or ``None`` if it has none. A malformed lock is a :class:`LockError`
    whose ``field`` names where (``wheels[0].sha256``)."""
    path = plugin_dir / LOCK_FILENAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        lock = msgspec.json.decode(raw, type=Lock, strict=True)
    except msgspec.ValidationError as exc:
        field = _field_of(str(exc))
        raise _malformed(path, field, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise _malformed(path, "", f"not valid JSON: {exc}") from None
    check_lock(path, lock)
    return lock


def _field_of(message: str) -> str:
    m = re.search(r"- at `\$\.?([^`]*)`", message)
    return m.group(1) if m else ""


def _malformed(path: Path, field: str, why: str) -> LockError:
    where = f" field {field!r}" if field else ""
    return LockError(f"{path} is malformed:{where} {why}", field=field or None, detail=why)


def check_lock(path: Path, lock: Lock) -> None:
    """Refuse a lock whose fields are not what :func:`lock_requirements` writes (a
    :class:`LockError` naming the field); ``path`` only names it in the message."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    if lock.format != LOCK_FORMAT:
        raise _malformed(path, "format", f"unknown format {lock.format} (expected {LOCK_FORMAT})")
    names: set[str] = set()
    for i, w in enumerate(lock.wheels):
        at = f"wheels[{i}]"
        if not _SHA256.fullmatch(w.sha256):
            raise _malformed(path, f"{at}.sha256", "not a lowercase hex sha256")
        if w.name != canonicalize_name(w.name) or not w.name:
            raise _malformed(path, f"{at}.name", f"{w.name!r} is not a canonical name")
        if w.name in names:
            raise _malformed(path, f"{at}.name", f"{w.name!r} is locked twice")
        names.add(w.name)
        if _normalized(w.version) is None:
            raise _malformed(path, f"{at}.version", f"{w.version!r} is not a version")
        if "/" in w.filename or "\\" in w.filename:
            raise _malformed(path, f"{at}.filename", "a file name, not a path")
        try:
            name, version, _, _ = parse_wheel_filename(w.filename)
        except InvalidWheelFilename as exc:
            raise _malformed(path, f"{at}.filename", str(exc)) from None
        if name != w.name or str(version) != _normalized(w.version):
            raise _malformed(path, f"{at}.filename", f"does not match {w.name}=={w.version}")
    if [w.name for w in lock.wheels] != sorted(names):
        raise _malformed(path, "wheels", "not sorted by name")


def _normalized(version: str) -> str | None:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(version))
    except InvalidVersion:
        return None


_check = check_lock  # the name _archive.py imports
