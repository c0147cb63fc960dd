"""Discovery finds plugin folders in directories and installed distributions, imports nothing
from them, and reports each broken source without losing the others."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from cordon.runtime._platform._discovery import (
    Candidate,
    DiscoveryResult,
    discover,
    is_plugin_dir,
    scan_directory,
    scan_entry_points,
)

DATA = Path(__file__).resolve().parent / "data" / "discovery"
TRAPPED_MODULES = ("hello_pkg", "acme", "acme.plugins", "acme.plugins.deep")


@pytest.fixture(autouse=True)
def import_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test proves, on the way out, that no plugin package was imported: each
    ``__init__.py`` under tests/data/discovery writes this marker before raising."""
    marker = tmp_path / "imported.marker"
    monkeypatch.setenv("CORDON_DISCOVERY_MARKER", str(marker))
    yield marker
    assert not marker.exists(), f"discovery imported {marker.read_text().strip()}"
    imported = [m for m in TRAPPED_MODULES if m in sys.modules]
    assert not imported, f"discovery imported {imported}"


def make_plugin(folder: Path, plugin_id: str | None = None) -> Path:
    folder.mkdir(parents=True)
    pid = plugin_id or folder.name
    (folder / "plugin.toml").write_text(
        f'[plugin]\nid = "{pid}"\nname = "{pid}"\nversion = "1.0"\nentry = "m:plugin"\n'
    )
    (folder / "m.py").write_text("")
    return folder


def install_bare(
    site: Path,
    dist: str,
    entry_points: Mapping[str, str],
    *,
    tree: Path | None = None,
    record: bool = True,
    version: str = "1.0.0",
) -> None:
    """Lay ``tree`` out in ``site`` with a dist-info, the way an installer leaves it. Without
    ``record`` the package files are left out of RECORD, as an editable install does."""
    site.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if tree is not None:
        shutil.copytree(tree, site, dirs_exist_ok=True)
        files = [p.relative_to(tree).as_posix() for p in sorted(tree.rglob("*")) if p.is_file()]
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cordon.plugins]\n{eps}")
    listed = [*(files if record else []), *(f"{info.name}/{n}" for n in ("METADATA", "RECORD"))]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in listed))


# -- directories --------------------------------------------------------------------------------


def test_each_subdirectory_with_a_manifest_is_a_candidate_in_name_order(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    make_plugin(root / "zeta")
    make_plugin(root / "alpha")
    (root / "not-a-plugin").mkdir()
    (root / "not-a-plugin" / "readme.txt").write_text("hi")
    (root / "stray-file.toml").write_text("")

    result = scan_directory(root)

    assert result.problems == ()
    assert result.candidates == (
        Candidate((root / "alpha").resolve(), f"dir:{root}"),
        Candidate((root / "zeta").resolve(), f"dir:{root}"),
    )


def test_hidden_directories_and_pycache_are_never_plugins(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    make_plugin(root / ".hidden")
    make_plugin(root / "__pycache__")
    make_plugin(root / "real")
    assert [c.path.name for c in scan_directory(root).candidates] == ["real"]


def test_a_listed_directory_that_is_itself_a_plugin_counts_as_that_plugin(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path / "solo")
    make_plugin(plugin / "fixtures" / "inner")  # a plugin's own test data is not a plugin
    result = scan_directory(plugin)
    assert [c.path for c in result.candidates] == [plugin.resolve()]


def test_a_missing_plugin_dir_is_reported_and_the_others_still_scanned(tmp_path: Path) -> None:
    make_plugin(tmp_path / "b" / "ok")
    result = discover([tmp_path / "a", tmp_path / "b"], entry_points=False)
    assert [c.path.name for c in result.candidates] == ["ok"]
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem["path"] == f"dir:{tmp_path / 'a'}"
    assert "does not exist" in problem["message"]


def test_a_plugin_dir_entry_that_is_a_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = scan_directory(tmp_path / "file")
    assert result.candidates == ()
    assert "not a directory" in result.problems[0]["message"]


def test_a_manifest_that_is_not_a_file_is_reported_with_the_plugin_folder(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    (root / "odd" / "plugin.toml").mkdir(parents=True)
    make_plugin(root / "fine")
    result = scan_directory(root)
    assert [c.path.name for c in result.candidates] == ["fine"]
    assert result.problems[0]["path"].endswith(":odd")
    assert "not a file" in result.problems[0]["message"]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads every directory"
)
def test_an_unreadable_plugin_folder_is_reported_and_the_others_still_found(
    tmp_path: Path,
) -> None:
    root = tmp_path / "plugins"
    locked = make_plugin(root / "locked")
    make_plugin(root / "open")
    locked.chmod(0)
    try:
        result = scan_directory(root)
    finally:
        locked.chmod(0o755)
    assert [c.path.name for c in result.candidates] == ["open"]
    assert result.problems[0]["path"].endswith(":locked")


def test_a_symlinked_plugin_is_found_and_the_same_folder_twice_is_one_candidate(
    tmp_path: Path,
) -> None:
    real = make_plugin(tmp_path / "checkout" / "mine")
    root = tmp_path / "plugins"
    root.mkdir()
    (root / "mine-link").symlink_to(real, target_is_directory=True)
    result = discover([root, real, root], entry_points=False)
    assert result.candidates == (Candidate(real.resolve(), f"dir:{root}"),)


def test_plugins_sharing_an_id_in_different_folders_are_both_kept(tmp_path: Path) -> None:
    a = make_plugin(tmp_path / "one" / "x", plugin_id="same")
    b = make_plugin(tmp_path / "two" / "y", plugin_id="same")
    result = discover([tmp_path / "one", tmp_path / "two"], entry_points=False)
    assert [c.path for c in result.candidates] == [a.resolve(), b.resolve()]


def test_is_plugin_dir_is_true_only_for_a_folder_with_a_manifest_file(tmp_path: Path) -> None:
    assert is_plugin_dir(make_plugin(tmp_path / "p"))
    assert not is_plugin_dir(tmp_path)
    assert not is_plugin_dir(tmp_path / "missing")


# -- installed distributions --------------------------------------------------------------------


def test_an_entry_point_naming_a_package_finds_its_plugin_folder(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_bare(site, "cordon-hello", {"hello": "hello_pkg"}, tree=DATA / "hello_dist")

    result = scan_entry_points([str(site)])

    assert result.problems == ()
    assert result.candidates == (
        Candidate((site / "hello_pkg").resolve(), "entry-point:cordon-hello", "hello"),
    )


def test_a_dotted_package_is_found_without_importing_its_parents(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_bare(site, "acme-deep", {"deep": "acme.plugins.deep"}, tree=DATA / "nested_dist")
    result = scan_entry_points([str(site)])
    assert [c.path for c in result.candidates] == [(site / "acme/plugins/deep").resolve()]


def test_an_editable_install_is_found_through_the_finders_without_importing(
    tmp_path: Path,
) -> None:
    # Editable installs list no package files in RECORD; the source tree is on the path.
    site = tmp_path / "site"
    src = tmp_path / "src"
    shutil.copytree(DATA / "nested_dist", src)
    shutil.copytree(DATA / "hello_dist", src, dirs_exist_ok=True)
    install_bare(site, "acme-deep", {"deep": "acme.plugins.deep"}, record=False)
    install_bare(site, "cordon-hello", {"hello": "hello_pkg"}, record=False)

    result = scan_entry_points([str(site), str(src)])

    assert result.problems == ()
    assert [c.path for c in result.candidates] == [
        (src / "acme/plugins/deep").resolve(),
        (src / "hello_pkg").resolve(),
    ]


def test_an_entry_point_naming_nothing_is_reported_and_the_others_still_found(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    install_bare(site, "cordon-hello", {"hello": "hello_pkg"}, tree=DATA / "hello_dist")
    install_bare(site, "ghostly", {"ghost": "no_such_pkg_anywhere"})

    result = scan_entry_points([str(site)])

    assert [c.entry_point for c in result.candidates] == ["hello"]
    (problem,) = result.problems
    assert problem["path"] == "entry-point:ghostly:ghost"
    assert "'no_such_pkg_anywhere' is not installed" in problem["message"]


def test_a_package_without_a_manifest_is_reported_with_how_to_fix_it(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bare_pkg").mkdir(parents=True)
    (tree / "bare_pkg" / "__init__.py").write_text("")
    site = tmp_path / "site"
    install_bare(site, "bare", {"bare": "bare_pkg"}, tree=tree)
    (problem,) = scan_entry_points([str(site)]).problems
    assert "has no plugin.toml" in problem["message"]
    assert "package data" in problem["message"]


def test_an_entry_point_value_that_is_not_a_package_name_is_reported(tmp_path: Path) -> None:
    site = tmp_path / "site"
    # TOML quotes copied into entry_points.txt (an INI file) are part of the value there.
    install_bare(site, "weird", {"weird": "not-a-name", "quoted": '"hello_pkg"'})
    problems = scan_entry_points([str(site)]).problems
    assert [p["path"] for p in problems] == ["entry-point:weird:quoted", "entry-point:weird:weird"]
    assert all("does not name a package" in p["message"] for p in problems)


def test_a_module_attribute_in_the_entry_point_still_locates_the_package(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_bare(site, "cordon-hello", {"hello": "hello_pkg:plugin"}, tree=DATA / "hello_dist")
    (cand,) = scan_entry_points([str(site)]).candidates
    assert cand.path == (site / "hello_pkg").resolve()


def test_the_first_distribution_of_a_name_on_the_path_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    install_bare(first, "cordon-hello", {"hello": "hello_pkg"}, tree=DATA / "hello_dist")
    install_bare(second, "cordon-hello", {"hello": "hello_pkg"}, tree=DATA / "hello_dist")
    result = scan_entry_points([str(first), str(second)])
    assert [c.path for c in result.candidates] == [(first / "hello_pkg").resolve()]


def test_discover_lists_directories_first_then_entry_points(tmp_path: Path) -> None:
    make_plugin(tmp_path / "plugins" / "local")
    site = tmp_path / "site"
    install_bare(site, "cordon-hello", {"hello": "hello_pkg"}, tree=DATA / "hello_dist")

    both = discover([tmp_path / "plugins"], path=[str(site)])
    only_dirs = discover([tmp_path / "plugins"], entry_points=False, path=[str(site)])

    assert [c.origin.split(":")[0] for c in both.candidates] == ["dir", "entry-point"]
    assert [c.path.name for c in only_dirs.candidates] == ["local"]


def test_discovery_results_add_up_in_order() -> None:
    a = DiscoveryResult((Candidate(Path("/a"), "dir:/"),))
    b = DiscoveryResult((Candidate(Path("/b"), "dir:/"),))
    assert [c.path for c in (a + b).candidates] == [Path("/a"), Path("/b")]


# -- a real install -----------------------------------------------------------------------------


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def build_wheel(tree: Path, dist: str, version: str, entry_points: str, out: Path) -> Path:
    """A pure-Python wheel of ``tree``, written by hand so the test needs no build backend."""
    stem = f"{dist.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    members: dict[str, bytes] = {
        p.relative_to(tree).as_posix(): p.read_bytes()
        for p in sorted(tree.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    members[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    )
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: cordon-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members[f"{info}/entry_points.txt"] = entry_points.encode()
    record = "".join(_record_line(n, d) for n, d in members.items()) + f"{info}/RECORD,,\n"
    members[f"{info}/RECORD"] = record.encode()
    wheel = out / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return wheel


def test_a_pip_installed_distribution_is_discovered_and_its_manifest_parses(
    tmp_path: Path,
) -> None:
    wheel = build_wheel(
        DATA / "hello_dist",
        "cordon-hello",
        "1.0.0",
        "[cordon.plugins]\nhello = hello_pkg\n",
        tmp_path,
    )
    target = tmp_path / "target"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available in this environment")
    assert proc.returncode == 0, proc.stderr

    result = discover([], path=[str(target)])

    assert result.problems == ()
    (cand,) = result.candidates
    assert cand == Candidate((target / "hello_pkg").resolve(), "entry-point:cordon-hello", "hello")
    from cordon.runtime._settings._manifest import load_manifest

    manifest = load_manifest(cand.path)
    assert (manifest.id, manifest.version, manifest.entry) == (
        "hello-ep",
        "1.0.0",
        "hello_impl:plugin",
    )


def test_a_plugin_dir_that_cannot_be_listed_is_reported_and_the_others_still_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs as root too (where chmod cannot make a folder unreadable): the listing itself fails.
    locked = tmp_path / "locked"
    locked.mkdir()
    make_plugin(tmp_path / "open" / "p")
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = discover([locked, tmp_path / "open"], entry_points=False)
    assert [c.path.name for c in result.candidates] == ["p"]
    (problem,) = result.problems
    assert problem["path"] == f"dir:{locked}"
    assert problem["message"] == "cannot read: Permission denied"


def test_an_entry_point_naming_a_single_module_file_is_reported_as_not_a_package(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "lone_module.py").write_text("raise RuntimeError('imported')\n")
    site = tmp_path / "site"
    install_bare(site, "lone", {"lone": "lone_module"}, tree=tree)
    result = scan_entry_points([str(site)])
    assert result.candidates == ()
    (problem,) = result.problems
    assert "is a module, not a package folder" in problem["message"]
    assert "lone_module" not in sys.modules


def test_entry_points_are_searched_on_sys_path_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, src = tmp_path / "site", tmp_path / "src"
    shutil.copytree(DATA / "nested_dist", src)
    install_bare(site, "acme-deep", {"deep": "acme.plugins.deep"}, record=False)
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.syspath_prepend(str(site))

    result = discover([])

    deep = [c for c in result.candidates if c.origin == "entry-point:acme-deep"]
    assert [c.path for c in deep] == [(src / "acme/plugins/deep").resolve()]
