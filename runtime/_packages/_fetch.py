"""Where an install's package comes from: a ``.cordon`` file, a plugin folder (locked when
needed and packed on the fly into the install's staging dir), or an ``https://`` URL
(downloaded into the staging dir, with a size cap and a deadline).

Plain ``http://`` is refused: a package fetched over it could be swapped on the way, and an
unsigned package has nothing else vouching for its bytes. Tests serve packages from a loopback
``http.server``; they pass ``allow_insecure_localhost`` (the CLI's
``--allow-insecure-localhost``), which admits ``http://127.0.0.1:<port>/`` and nothing else.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Final

from .._settings._manifest import load_manifest
from ._archive import DEFAULT_LIMITS, PACKAGE_SUFFIX, pack
from ._errors import LockError, PackageInvalid
from ._lock import LOCK_FILENAME, IndexOptions, Lock, lock_requirements, read_lock, write_lock

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "MAX_DOWNLOAD_BYTES",
    "check_fresh",
    "fetch_package",
    "manifest_dependencies",
    "pack_folder",
]

#: The whole download, connect to last byte: a server trickling one byte a minute must not
#: hold an install (and its staging dir) forever.
DOWNLOAD_TIMEOUT: Final = 120.0
#: The largest package worth fetching: the biggest archive open_package would accept
#: (its uncompressed budget, since a stored entry is as big as its content) plus headers.
MAX_DOWNLOAD_BYTES: Final = DEFAULT_LIMITS.max_total_bytes + 32 * 1024 * 1024
#: One socket operation (connect, one read): a peer silent this long is gone. Bounds how far
#: a single blocked read can overrun :data:`DOWNLOAD_TIMEOUT`, checked between reads.
STALL_TIMEOUT: Final = 30.0
_CHUNK: Final = 256 * 1024


def manifest_dependencies(plugin_dir: Path) -> tuple[str, ...]:
    """The ``[plugin] dependencies`` of a folder's manifest, validated with the rest of it
    (a broken manifest is its :class:`ManifestError`); nothing of the plugin is imported."""
    return load_manifest(plugin_dir).dependencies


def check_fresh(where: str, deps: tuple[str, ...], lock: Lock | None) -> None:
    """A lock made for other dependencies than the manifest's would install the wrong
    environment: refuse it, naming both."""
    if lock is None:
        if deps:
            raise LockError(
                f"{where}: the manifest declares dependencies {list(deps)} but there is no "
                f"{LOCK_FILENAME} (run cordon plugin lock)",
                field="requirements",
            )
        return
    if tuple(lock.requirements) != tuple(deps):
        raise LockError(
            f"{where}: {LOCK_FILENAME} was made for {list(lock.requirements)}, the manifest "
            f"declares {list(deps)}; lock again (cordon plugin lock)",
            field="requirements",
        )


def pack_folder(
    plugin_dir: Path, out_dir: Path, options: IndexOptions, signing_key: Path | None = None
) -> Path:
    """Pack ``plugin_dir`` into ``out_dir``, writing its ``plugin.lock`` first when the
    manifest declares dependencies and no lock exists (what ``cordon plugin pack`` does); a
    lock made for other dependencies is refused."""
    deps = manifest_dependencies(plugin_dir)
    lock = read_lock(plugin_dir)
    if deps and lock is None:
        lock = lock_requirements(deps, options)
        write_lock(plugin_dir, lock)
    check_fresh(str(plugin_dir), deps, lock)
    return pack(plugin_dir, out_dir, signing_key=signing_key)


def fetch_package(
    source: str, staging: Path, options: IndexOptions, *, allow_insecure_localhost: bool
) -> tuple[Path, str]:
    """The package file for ``source`` (inside ``staging`` unless it was already a file) and
    the source as recorded (an absolute path or the URL)."""
    if "://" in source:
        return _download(source, staging, allow_insecure_localhost), source
    path = Path(source).expanduser().absolute()
    if path.is_dir():
        return pack_folder(path, staging / "packed", options), str(path)
    if not path.is_file():
        raise PackageInvalid(path=source, reason="no such file or plugin folder")
    if path.suffix != PACKAGE_SUFFIX:
        raise PackageInvalid(path=source, reason=f"not a {PACKAGE_SUFFIX} package")
    return path, str(path)


def _check_url(url: str, allow_insecure_localhost: bool) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if (
        parts.scheme == "http"
        and allow_insecure_localhost
        and parts.hostname == "127.0.0.1"
        and parts.port is not None
    ):
        return
    raise PackageInvalid(
        path=url,
        reason="only https:// URLs are fetched (plain http lets anyone on the path swap the "
        "package)",
    )


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Redirects are checked like the first URL: https must not become http on the way."""

    def __init__(self, allow_insecure_localhost: bool) -> None:
        self._allow = allow_insecure_localhost

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        _check_url(newurl, self._allow)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, staging: Path, allow_insecure_localhost: bool) -> Path:
    _check_url(url, allow_insecure_localhost)
    opener = urllib.request.build_opener(_NoDowngrade(allow_insecure_localhost))
    target = staging / f"download{PACKAGE_SUFFIX}"
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT
    received = 0
    try:
        with opener.open(url, timeout=STALL_TIMEOUT) as response, open(target, "xb") as out:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_DOWNLOAD_BYTES:
                raise PackageInvalid(
                    path=url, reason=f"larger than {MAX_DOWNLOAD_BYTES} bytes ({declared})"
                )
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                # Counted as the bytes arrive: a missing or lying Content-Length changes nothing.
                if received > MAX_DOWNLOAD_BYTES:
                    raise PackageInvalid(path=url, reason=f"larger than {MAX_DOWNLOAD_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise PackageInvalid(
                        path=url, reason=f"download not finished within {DOWNLOAD_TIMEOUT:g} s"
                    )
                out.write(chunk)
    except PackageInvalid:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PackageInvalid(path=url, reason=f"download failed: {exc}") from None
    return target
