"""Build a wheelhouse for the package tests: minimal pure-Python wheels (METADATA, WHEEL, a
RECORD with correct hashes, one module) and sdist-only packages, all written with the stdlib
so the tests need no network, no build backend and no index.

Each module defines ``VERSION`` so a test can tell which copy of a library a process imported.
The archives are reproducible (fixed timestamps, sorted entries): building the same wheel
twice gives the same bytes, hence the same sha256."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["make_sdist", "make_wheel", "sdist_marker", "sha256_file", "standard_wheelhouse"]

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_wheel(
    wheelhouse: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    module_source: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    tag: str = "py3-none-any",
) -> Path:
    """Write ``<name>-<version>-<tag>.whl`` into ``wheelhouse`` and return its path. The wheel
    holds the module ``<name>`` (its source is ``VERSION = "<version>"`` unless given),
    ``extra_files`` (archive path → bytes, e.g. a ``.pth``), and the dist-info."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    source = module_source if module_source is not None else f'VERSION = "{version}"\n'
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    pure = "true" if tag.endswith("-none-any") else "false"
    wheel_meta = (
        f"Wheel-Version: 1.0\nGenerator: cordon-tests\nRoot-Is-Purelib: {pure}\nTag: {tag}\n"
    )
    files: dict[str, bytes] = {f"{dist}.py": source.encode()}
    files.update(extra_files or {})
    files[f"{info}/METADATA"] = metadata.encode()
    files[f"{info}/WHEEL"] = wheel_meta.encode()
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in sorted(files.items()))
    record += f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = wheelhouse / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files.items():  # RECORD last, as the spec recommends
            zi = zipfile.ZipInfo(arcname, date_time=_EPOCH)
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def sdist_marker(wheelhouse: Path, name: str) -> Path:
    """The file an sdist made by :func:`make_sdist` writes if anything ever runs its setup.py."""
    return wheelhouse.parent / f"{name}-setup-py-ran"


def make_sdist(wheelhouse: Path, name: str, version: str) -> Path:
    """Write ``<name>-<version>.tar.gz``, a source distribution with no wheel beside it; its
    ``setup.py`` writes :func:`sdist_marker` if anything ever builds it."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{version}"
    marker = str(sdist_marker(wheelhouse, name))
    members = {
        f"{base}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{base}/setup.py": (
            f"import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"
            f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n"
        ),
    }
    path = wheelhouse / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for arcname, text in sorted(members.items()):
            data = text.encode()
            ti = tarfile.TarInfo(arcname)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    return path


def standard_wheelhouse(wheelhouse: Path) -> Path:
    """The tests' usual wheelhouse: ``cordonlib`` 1.0 and 2.0, ``cordonhelper`` 1.0 (needs
    ``cordonlib>=1``), ``cordonextra`` 1.0, and the sdist-only ``cordonsrc`` 1.0."""
    make_wheel(wheelhouse, "cordonlib", "1.0")
    make_wheel(wheelhouse, "cordonlib", "2.0")
    make_wheel(wheelhouse, "cordonhelper", "1.0", requires=["cordonlib>=1"])
    make_wheel(wheelhouse, "cordonextra", "1.0")
    make_sdist(wheelhouse, "cordonsrc", "1.0")
    return wheelhouse
