"""Hostile archives: each is refused by ``open_package`` with a ``PackageInvalid`` naming the
entry and the reason, and nothing is written anywhere (the archive's folder, the temp dir and
the would-be destination stay as they were). Each archive is valid but for the one thing
under test, so a refusal cannot come from an unrelated check."""

from __future__ import annotations

import json
import stat
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest

from cordon.runtime._packages._archive import FILES_NAME, PackageLimits, open_package
from cordon.runtime._packages._errors import PackageInvalid

from .archives import (
    RawEntry,
    base_files,
    files_listing,
    raw_zip,
    write_package,
    zeros_bomb,
)
from .archives import stored as stored_entry

GiB = 1 << 30


class Quiet:
    """An archive folder and a temp dir that must stay as they are."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "archives"
        self.tmp = root / "tmp"
        self.dest = root / "dest"
        self.folder.mkdir()
        self.tmp.mkdir()

    def refused(
        self, archive: Path, entry: str | None, reason: str, limits: PackageLimits | None = None
    ) -> PackageInvalid:
        with pytest.raises(PackageInvalid) as info:
            open_package(archive, limits) if limits else open_package(archive)
        exc = info.value
        assert exc.entry == entry, exc
        assert reason in (exc.reason or ""), exc
        assert exc.path == str(archive)
        assert [p.name for p in self.folder.iterdir()] == [archive.name]
        assert list(self.tmp.iterdir()) == []
        assert not self.dest.exists()
        return exc


@pytest.fixture
def quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Quiet:
    q = Quiet(tmp_path)
    monkeypatch.setenv("TMPDIR", str(q.tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(q.tmp))
    return q


def info_of(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = mode << 16
    return info


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.py", "'..' component"),
        ("data/../../evil.py", "'..' component"),
        ("/etc/cron.d/evil", "absolute path"),
        ("data\\..\\evil.py", "backslash"),
        ("a\x1b[2Jb.py", "control"),
        ("evil\u202egnp.py", "control"),
        ("data//x.py", "empty or '.' component"),
        ("./x.py", "empty or '.' component"),
        ("C:/x.py", "drive-letter"),
        ("d/" + "x" * 300, "component longer"),
        ("__pycache__/greeter.cpython-311.pyc", "compiled bytecode"),
        ("greeter.pyc", "compiled bytecode"),
        (".hidden.py", "hidden"),
        ("data/.cache/x", "hidden"),
    ],
)
def test_an_entry_with_an_unsafe_name_is_refused(quiet: Quiet, name: str, reason: str) -> None:
    files = base_files() | {name: b"x"}
    archive = write_package(quiet.folder / "p.cordon", files)
    quiet.refused(archive, name, reason)


@pytest.mark.parametrize(
    ("name", "reason"),
    [(b"", "empty name"), (b"evil.py\x00.txt", "NUL"), (b"evil\x07.py", "control")],
)
def test_names_zipfile_cannot_write_are_refused_too(quiet: Quiet, name: bytes, reason: str) -> None:
    entries = [stored_entry(n.encode(), d) for n, d in sorted(base_files().items())]
    archive = raw_zip(quiet.folder / "p.cordon", [*entries, stored_entry(name, b"x")])
    quiet.refused(archive, name.decode(), reason)


# -- types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFCHR | 0o666, "device file"),
        (stat.S_IFBLK | 0o660, "device file"),
        (stat.S_IFIFO | 0o644, "FIFO"),
        (stat.S_IFSOCK | 0o755, "socket"),
        (stat.S_IFDIR | 0o755, "directory entry"),
    ],
)
def test_an_entry_that_is_not_a_regular_file_is_refused(
    quiet: Quiet, mode: int, reason: str
) -> None:
    # Listed with a matching hash: the type alone must be enough to refuse it.
    files = base_files() | {"data/link": b"/etc/shadow"}
    archive = write_package(
        quiet.folder / "p.cordon",
        base_files(),
        listing=files_listing(files),
        extra=[(info_of("data/link", mode), b"/etc/shadow")],
    )
    quiet.refused(archive, "data/link", reason)


def test_a_directory_entry_is_refused(quiet: Quiet) -> None:
    archive = write_package(quiet.folder / "p.cordon", extra=[("data/", b"")])
    quiet.refused(archive, "data/", "directory entry")


def test_an_encrypted_entry_is_refused(quiet: Quiet) -> None:
    files = base_files() | {"secret.py": b"x"}
    entries = [stored_entry(n.encode(), d) for n, d in sorted(files.items())]
    entries[-1].flags |= 0x1  # "encrypted": zipfile's writer clears the bit, so by hand
    entries.append(stored_entry(FILES_NAME.encode(), files_listing(files)))
    archive = raw_zip(quiet.folder / "p.cordon", entries)
    quiet.refused(archive, "secret.py", "encrypted")


# -- duplicates and collisions ---------------------------------------------------------------------


def test_a_duplicate_name_is_refused(quiet: Quiet) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's own "Duplicate name" warning
        archive = write_package(
            quiet.folder / "p.cordon", extra=[("greeter.py", b"import os  # the other copy\n")]
        )
    quiet.refused(archive, "greeter.py", "duplicate name")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Greeter.py", "greeter.py"),
        ("caf\u00e9.py", "cafe\u0301.py"),  # NFC vs NFD
        ("\uff21.py", "a.py"),  # full-width A folds to a
        ("data", "data/x.py"),  # a file that is also a directory
    ],
)
def test_names_that_would_land_on_the_same_file_are_refused(
    quiet: Quiet, first: str, second: str
) -> None:
    files = base_files() | {first: b"1", second: b"2"}
    archive = write_package(quiet.folder / "p.cordon", files)
    exc = quiet.refused(archive, max(first, second), "collides")  # the later one is refused
    assert first in str(exc) and second in str(exc)


# -- counts and sizes ------------------------------------------------------------------------------


def test_ten_thousand_and_one_files_are_refused_before_the_directory_is_parsed(
    quiet: Quiet,
) -> None:
    many = {f"f/{i}.py": b"" for i in range(10_001)}
    path = quiet.folder / "p.cordon"
    with zipfile.ZipFile(path, "w") as z:
        for name in sorted(base_files() | many):
            z.writestr(name, b"")
    quiet.refused(path, None, "more than 5002 entries")


def test_more_files_than_the_limit_are_refused(quiet: Quiet) -> None:
    files = base_files() | {f"{i}.py": b"" for i in range(3)}
    archive = write_package(quiet.folder / "p.cordon", files)
    quiet.refused(archive, None, "more than 4 files", PackageLimits(max_files=4))


def _bomb_archive(path: Path, claimed: int) -> Path:
    bomb, crc = zeros_bomb(1024)
    entries = [stored_entry(n.encode(), d) for n, d in sorted(base_files().items())]
    entries.append(RawEntry(b"zeros.bin", bomb, crc, claimed, method=zipfile.ZIP_DEFLATED))
    # Listed (as 1 GiB) so that being unlisted is not what refuses it.
    body = json.loads(files_listing(base_files()))
    body.append({"mode": 0o644, "path": "zeros.bin", "sha256": "0" * 64, "size": GiB})
    entries.append(stored_entry(FILES_NAME.encode(), json.dumps(body).encode()))
    return raw_zip(path, entries)


def test_a_gigabyte_of_zeros_compressed_to_a_megabyte_is_refused_by_its_size(quiet: Quiet) -> None:
    archive = _bomb_archive(quiet.folder / "p.cordon", claimed=GiB)
    assert archive.stat().st_size < 2 << 20
    quiet.refused(archive, "zeros.bin", "larger than 67108864 bytes")


def test_a_bomb_within_the_size_limits_is_refused_by_its_compression_ratio(quiet: Quiet) -> None:
    archive = _bomb_archive(quiet.folder / "p.cordon", claimed=GiB)
    limits = PackageLimits(max_file_bytes=2 * GiB, max_total_bytes=2 * GiB)
    quiet.refused(archive, "zeros.bin", "compression ratio", limits)


@pytest.mark.parametrize("claimed", [1000, 60 << 20])
def test_a_bomb_whose_header_lies_about_its_size_is_refused(quiet: Quiet, claimed: int) -> None:
    # zipfile stops at the claimed size: the CRC of what it produced then cannot match.
    archive = _bomb_archive(quiet.folder / "p.cordon", claimed=claimed)
    quiet.refused(archive, "zeros.bin", "corrupt entry")


def test_a_header_claiming_more_bytes_than_the_entry_holds_is_refused(quiet: Quiet) -> None:
    entries = [stored_entry(n.encode(), d) for n, d in sorted(base_files().items())]
    data = b"x" * 100
    deflated = zlib.compress(data, 9)[2:-4]
    entries.append(RawEntry(b"d.txt", deflated, zlib.crc32(data), 5000, zipfile.ZIP_DEFLATED))
    listing = files_listing(base_files() | {"d.txt": data})
    entries.append(stored_entry(FILES_NAME.encode(), listing))
    archive = raw_zip(quiet.folder / "p.cordon", entries)
    quiet.refused(archive, "d.txt", "header claims 5000")


def test_more_uncompressed_bytes_in_all_than_the_limit_are_refused(quiet: Quiet) -> None:
    files = base_files() | {f"{i}.txt": bytes(400) for i in range(3)}
    archive = write_package(quiet.folder / "p.cordon", files)
    # The file list counts too: room for it and two of the three files.
    limits = PackageLimits(max_total_bytes=len(files_listing(files)) + 1000)
    quiet.refused(archive, "2.txt", "in all", limits)


# -- the file list ---------------------------------------------------------------------------------


def test_tampered_bytes_under_the_old_hash_are_refused(quiet: Quiet) -> None:
    honest = base_files()
    files = honest | {"greeter.py": b"def plugin():\n    return 2\n"}  # same size, other bytes
    archive = write_package(quiet.folder / "p.cordon", files, listing=files_listing(honest))
    quiet.refused(archive, "greeter.py", "does not match")


def test_a_size_that_disagrees_with_the_list_is_refused(quiet: Quiet) -> None:
    honest = base_files()
    files = honest | {"greeter.py": honest["greeter.py"] + b"#"}
    archive = write_package(quiet.folder / "p.cordon", files, listing=files_listing(honest))
    quiet.refused(archive, "greeter.py", "says")


def test_a_file_missing_from_the_archive_is_refused(quiet: Quiet) -> None:
    listing = files_listing(base_files() | {"helper.py": b"x"})
    archive = write_package(quiet.folder / "p.cordon", listing=listing)
    quiet.refused(archive, "helper.py", "missing from the archive")


def test_a_file_not_in_the_list_is_refused(quiet: Quiet) -> None:
    archive = write_package(quiet.folder / "p.cordon", extra=[("sneaky.py", b"import os\n")])
    quiet.refused(archive, "sneaky.py", "not listed")


def test_an_archive_without_a_file_list_is_refused(quiet: Quiet) -> None:
    path = quiet.folder / "p.cordon"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in base_files().items():
            z.writestr(name, data)
    quiet.refused(path, FILES_NAME, "not a cordon package")


@pytest.mark.parametrize(
    ("listing", "entry"),
    [
        (b"{not json", FILES_NAME),
        (b'[{"path": "greeter.py"}]', FILES_NAME),
        (files_listing(base_files(), {"greeter.py": 0o4755}), "greeter.py"),
        (files_listing(base_files()).replace(b'"greeter.py"', b'"../greeter.py"'), None),
    ],
)
def test_a_malformed_file_list_is_refused(quiet: Quiet, listing: bytes, entry: str | None) -> None:
    archive = write_package(quiet.folder / "p.cordon", listing=listing)
    with pytest.raises(PackageInvalid) as info:
        open_package(archive)
    if entry is not None:
        assert info.value.entry == entry
    else:
        assert info.value.entry == "../greeter.py"
    assert list(quiet.tmp.iterdir()) == []


# -- not a zip -------------------------------------------------------------------------------------


def test_a_truncated_archive_is_refused(quiet: Quiet, tmp_path: Path) -> None:
    whole = write_package(tmp_path / "whole.cordon").read_bytes()
    archive = quiet.folder / "p.cordon"
    archive.write_bytes(whole[: len(whole) // 2])
    quiet.refused(archive, None, "not a zip archive")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"\x7fELF" + bytes(100)])
def test_something_that_is_not_a_zip_is_refused(quiet: Quiet, content: bytes) -> None:
    archive = quiet.folder / "p.cordon"
    archive.write_bytes(content)
    quiet.refused(archive, None, "not a zip archive")


def test_corrupt_compressed_data_is_refused_naming_the_entry(quiet: Quiet) -> None:
    files = base_files() | {"big.txt": b"".join(b"line %d\n" % i for i in range(5000))}
    archive = write_package(quiet.folder / "p.cordon", files)
    raw = bytearray(archive.read_bytes())
    at = raw.index(b"big.txt") + len(b"big.txt") + 200  # inside its deflate stream
    raw[at : at + 8] = b"\xff" * 8
    archive.write_bytes(bytes(raw))
    quiet.refused(archive, "big.txt", "corrupt entry")


def test_a_fifo_in_place_of_the_archive_is_refused_without_blocking(quiet: Quiet) -> None:
    import os

    fifo = quiet.folder / "p.cordon"
    os.mkfifo(fifo)
    quiet.refused(fifo, None, "not a regular file")
