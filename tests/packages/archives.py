"""Helpers for the package-format tests: a small plugin folder, well-formed packages built
entry by entry (so a test changes exactly one thing), and a raw zip writer for what
``zipfile`` refuses to write (NUL or empty names, headers that lie about sizes, bombs)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cordon.runtime._packages._archive import FILES_NAME

__all__ = [
    "MANIFEST",
    "RawEntry",
    "files_listing",
    "make_plugin",
    "raw_zip",
    "read_entries",
    "write_package",
    "zeros_bomb",
]

MANIFEST = """\
[plugin]
id = "greeter"
name = "Greeter"
version = "1.2.0"
entry = "greeter:plugin"
permissions = ["log"]
"""

_EPOCH = (1980, 1, 1, 0, 0, 0)


def make_plugin(folder: Path, *, umask: int = 0o022) -> Path:
    """A plugin with a module, a data file in a subfolder and an executable script."""
    old = os.umask(umask)
    try:
        (folder / "data").mkdir(parents=True)
        (folder / "bin").mkdir()
        (folder / "plugin.toml").write_text(MANIFEST)
        (folder / "greeter.py").write_text("def plugin():\n    return 'hi'\n")
        (folder / "data" / "words.txt").write_text("hello\nbonjour\nnǐ hǎo\n")
        script = folder / "bin" / "tool.sh"
        script.write_text("#!/bin/sh\necho tool\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    finally:
        os.umask(old)
    return folder


def files_listing(files: Mapping[str, bytes], modes: Mapping[str, int] | None = None) -> bytes:
    modes = modes or {}
    body = [
        {
            "path": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "mode": modes.get(name, 0o644),
        }
        for name, data in sorted(files.items())
    ]
    return (json.dumps(body, sort_keys=True, indent=2) + "\n").encode()


def base_files() -> dict[str, bytes]:
    return {"plugin.toml": MANIFEST.encode(), "greeter.py": b"def plugin():\n    return 1\n"}


def write_package(
    path: Path,
    files: Mapping[str, bytes] | None = None,
    *,
    listing: bytes | None = None,
    extra: Iterable[tuple[zipfile.ZipInfo | str, bytes]] = (),
    meta: Mapping[str, bytes] | None = None,
) -> Path:
    """A package of ``files`` (default: a valid minimal plugin) with a correct file list
    unless ``listing`` is given; ``extra`` entries are added unlisted, as written."""
    files = dict(base_files() if files is None else files)
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = sorted(files.items())
    entries.append((FILES_NAME, files_listing(files) if listing is None else listing))
    entries += list((meta or {}).items())
    entries += list(extra)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name, _EPOCH)
            if not isinstance(name, zipfile.ZipInfo):
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
            z.writestr(info, data)
    return path


def read_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


@dataclass
class RawEntry:
    name: bytes
    data: bytes  # as stored (already deflated when method == 8)
    crc: int
    usize: int  # what the headers claim, true or not
    method: int = zipfile.ZIP_STORED
    external_attr: int = (stat.S_IFREG | 0o644) << 16
    flags: int = 0x800  # UTF-8 names


def stored(name: bytes, data: bytes) -> RawEntry:
    return RawEntry(name, data, zlib.crc32(data), len(data))


def raw_zip(path: Path, entries: Iterable[RawEntry]) -> Path:
    """A zip written byte by byte: names and sizes exactly as given."""
    out = bytearray()
    central = bytearray()
    count = 0
    for e in entries:
        offset = len(out)
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, e.flags, e.method, 0, 33,
            e.crc, len(e.data), e.usize, len(e.name), 0,
        )  # fmt: skip
        out += e.name + e.data
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", (3 << 8) | 20, 20, e.flags, e.method, 0, 33,
            e.crc, len(e.data), e.usize, len(e.name), 0, 0, 0, 0, e.external_attr, offset,
        )  # fmt: skip
        central += e.name
        count += 1
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def zeros_bomb(mib: int) -> tuple[bytes, int]:
    """``(raw deflate stream, crc32)`` of ``mib`` MiB of zeros, about 1 KiB per MiB: one
    fully flushed block repeated (each copy refers only to itself), then a final empty block."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    chunk = bytes(1 << 20)
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return block * mib + b"\x03\x00", crc
