"""Reading a zip nobody vouches for: the file is hashed and its end record checked before
``zipfile`` parses anything (a central directory of a million entries is refused by its size,
not by parsing it), and every entry is decompressed in chunks against the bytes *actually
produced*, never the sizes its headers claim, with a bound on the compression ratio. Each
refusal is a :class:`PackageInvalid` naming the entry."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Final

from ._errors import PackageInvalid
from ._safety import MAX_PATH_BYTES, entry_name_problem, zip_type_problem

__all__ = ["MAX_COMPRESSION_RATIO", "ArchiveReader", "MiB", "check_entry", "read_entry"]

MiB: Final = 1024 * 1024
#: Decompression step: bounds the memory one read can take whatever the entry claims.
_CHUNK: Final = 64 * 1024
#: Deflate tops out near 1032:1. Source and data files compress 3-20:1; an entry that
#: inflates more than 250:1 past its first MiB is a bomb, not a plugin.
MAX_COMPRESSION_RATIO: Final = 250
_RATIO_FLOOR: Final = MiB
#: End of central directory: signature, 4 x u16 (disks, counts), 2 x u32 (size, offset), u16.
_EOCD: Final = struct.Struct("<4s4H2LH")
_EOCD_SIG: Final = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG: Final = b"PK\x06\x07"
_MAX_COMMENT: Final = 0xFFFF
#: A central directory record: 46 fixed bytes, the name, and room for small extra fields.
_CD_BYTES_PER_ENTRY: Final = 46 + MAX_PATH_BYTES + 256
_ENCRYPTED: Final = 0x1
_METHODS: Final = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
#: Everything zipfile and zlib raise on malformed input.
_CORRUPT: Final = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    struct.error,
    UnicodeDecodeError,
)


class ArchiveReader:
    """An open archive: ``zip`` over the same open file that ``sha256`` was computed from."""

    def __init__(self, label: str, archive: zipfile.ZipFile, sha256: str) -> None:
        self.label = label
        self.zip = archive
        self.sha256 = sha256

    def refuse(self, entry: str | None, reason: str) -> PackageInvalid:
        return PackageInvalid(path=self.label, entry=entry, reason=reason)

    @classmethod
    @contextmanager
    def open(cls, path: Path, max_entries: int, max_bytes: int) -> Iterator[ArchiveReader]:
        label = str(path)

        def refuse(reason: str) -> PackageInvalid:
            return PackageInvalid(path=label, entry=None, reason=reason)

        try:
            # O_NONBLOCK: opening a FIFO planted at the path must not hang the host.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise refuse(f"cannot open: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise refuse("not a regular file")
            os.set_blocking(fd, True)
            if st.st_size > max_bytes:
                raise refuse(f"the archive is larger than {max_bytes} bytes")
            digest = _hash_file(f)
            _check_end_record(f, st.st_size, max_entries, refuse)
            f.seek(0)
            try:
                archive = zipfile.ZipFile(f)
            except (*_CORRUPT, zipfile.LargeZipFile) as exc:
                raise refuse(f"not a valid zip archive: {exc}") from None
            with archive:
                yield cls(label, archive, digest)


def _hash_file(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(MiB):
        h.update(chunk)
    return h.hexdigest()


def _check_end_record(
    f: BinaryIO, size: int, max_entries: int, refuse: Callable[[str], PackageInvalid]
) -> None:
    start = max(0, size - _EOCD.size - _MAX_COMMENT)
    f.seek(start)
    tail = f.read()
    at = tail.rfind(_EOCD_SIG)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise refuse("not a zip archive (no end-of-central-directory record: truncated?)")
    _sig, disk, cd_disk, _here, entries, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, at)
    zip64 = at >= 20 and tail[at - 20 : at - 16] == _ZIP64_LOCATOR_SIG
    if zip64 or 0xFFFF in (entries, disk, cd_disk) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise refuse("ZIP64 or multi-part archive (cordon packages are never either)")
    if disk or cd_disk:
        raise refuse("multi-part archive")
    if entries > max_entries:
        raise refuse(f"more than {max_entries} entries")
    if cd_size > max(entries, 1) * _CD_BYTES_PER_ENTRY:
        raise refuse(f"central directory of {cd_size} bytes for {entries} entries")


def check_entry(r: ArchiveReader, info: zipfile.ZipInfo) -> None:
    """Refuse an entry whose name, type, encryption or compression method is not what a
    cordon package holds. ``orig_filename``: zipfile truncates ``filename`` at a NUL."""
    name = info.orig_filename
    problem = entry_name_problem(name) or zip_type_problem(info.external_attr)
    if problem is not None:
        raise r.refuse(name, problem)
    if info.flag_bits & _ENCRYPTED:
        raise r.refuse(name, "encrypted entry")
    if info.compress_type not in _METHODS:
        raise r.refuse(name, f"compression method {info.compress_type} (only stored/deflated)")


def read_entry(
    r: ArchiveReader,
    info: zipfile.ZipInfo,
    cap: int,
    budget: list[int],
    *,
    keep: bool = True,
) -> tuple[bytes, str, int]:
    """``(bytes or b"", sha256 hex, size)`` of the entry, decompressed in chunks: refused as
    soon as it produces more than ``cap`` bytes, more than ``budget[0]`` (the archive's
    remaining total, decremented), or inflates past :data:`MAX_COMPRESSION_RATIO`."""
    name = info.orig_filename
    h = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    ratio_cap = max(_RATIO_FLOOR, info.compress_size * MAX_COMPRESSION_RATIO)
    try:
        with r.zip.open(info) as src:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > cap:
                    raise r.refuse(name, f"more than {cap} bytes uncompressed")
                if size > budget[0]:
                    raise r.refuse(name, "the archive holds too many uncompressed bytes in all")
                if size > ratio_cap:
                    raise r.refuse(
                        name, f"compression ratio over {MAX_COMPRESSION_RATIO}:1 (a zip bomb)"
                    )
                h.update(chunk)
                if keep:
                    chunks.append(chunk)
    except PackageInvalid:
        raise
    except _CORRUPT as exc:
        raise r.refuse(name, f"corrupt entry: {exc}") from None
    if size != info.file_size:
        raise r.refuse(name, f"holds {size} bytes, its header claims {info.file_size}")
    budget[0] -= size
    return b"".join(chunks), h.hexdigest(), size
