"""The manifest's ``[plugin] dependencies`` (PEP 508, validated with everything else) and the
installed store's reader against half-written and tampered states: it never follows a link
out of a plugin's folder, recomputes paths from the layout, and names a malformed record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cordon.runtime._errors import ManifestError
from cordon.runtime._packages._errors import PackageError
from cordon.runtime._packages._store import (
    InstalledPlugin,
    installed,
    list_installed,
    previous,
    read_installed,
    record_path,
)
from cordon.runtime._settings._manifest import parse_manifest

# -- [plugin] dependencies in the manifest ---------------------------------------------------


def _manifest(deps: object) -> dict[str, Any]:
    return {
        "plugin": {
            "id": "deps",
            "name": "deps",
            "version": "1.0",
            "entry": "m:plugin",
            "dependencies": deps,
        }
    }


def test_manifest_dependencies_are_pep_508_with_markers_and_extras_allowed() -> None:
    deps = ["humanize>=4", 'tomli>=2; python_version < "3.11"', "rich[jupyter]~=13.0"]
    assert parse_manifest(_manifest(deps), directory=None).dependencies == tuple(deps)
    assert parse_manifest(_manifest([]), directory=None).dependencies == ()


def test_each_bad_dependency_is_a_problem_naming_its_index() -> None:
    deps = [
        "good>=1",
        "not a requirement!",
        "evil @ https://example.org/evil-1.0-py3-none-any.whl",
        "local @ file:///tmp/x.whl",
        7,
        "good>=1",
    ]
    with pytest.raises(ManifestError) as info:
        parse_manifest(_manifest(deps), directory=None)
    by_path = {p["path"]: p["message"] for p in info.value.problems}
    assert set(by_path) == {f"plugin.dependencies[{i}]" for i in (1, 2, 3, 4, 5)}
    assert "direct reference" in by_path["plugin.dependencies[2]"]
    assert "direct reference" in by_path["plugin.dependencies[3]"]


def test_dependencies_must_be_a_list_of_strings() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(_manifest("humanize>=4"), directory=None)
    assert [p["path"] for p in info.value.problems] == ["plugin.dependencies"]


# -- the store's reader: half-written and tampered states ------------------------------------


def _fake(state: Path, name: str, version: str, **fields: Any) -> Path:
    """A store entry written by hand: ``<state>/plugins/<name>/<version>/``, its record
    (``fields`` override it), and ``.state.json``'s ``current`` naming it."""
    root = state / "plugins" / name
    (root / version).mkdir(parents=True)
    record = {
        "plugin_id": name,
        "version": version,
        "plugin_dir": str(root / version),
        "source": "test",
        "sha256": "",
        "signer": None,
        "env_key": None,
        "site_packages": None,
        "installed_at": 0.0,
        "requested": [],
        **fields,
    }
    record_path(state, name, version).write_bytes(msgspec.json.encode(record))
    _pointers(root, version)
    return root


def _pointers(root: Path, current: str, previous: str | None = None) -> None:
    data = {"current": current, "previous": previous}
    (root / ".state.json").write_bytes(msgspec.json.encode(data))


def test_a_current_link_to_a_missing_version_dir_reads_as_not_installed(tmp_path: Path) -> None:
    root = _fake(tmp_path, "gone", "1.0")
    (root / "1.0").rmdir()
    assert installed(tmp_path, "gone") is None
    assert list_installed(tmp_path) == []


def test_a_malformed_record_is_a_package_error_naming_its_file(tmp_path: Path) -> None:
    _fake(tmp_path, "bad", "1.0")
    record_path(tmp_path, "bad", "1.0").write_text("{not json")
    with pytest.raises(PackageError) as info:
        installed(tmp_path, "bad")
    assert str(record_path(tmp_path, "bad", "1.0")) in info.value.message
    # A listing shows the others around it.
    _fake(tmp_path, "good", "1.0")
    listing = dict(read_installed(tmp_path))
    assert isinstance(listing["bad"], PackageError)
    assert isinstance(listing["good"], InstalledPlugin)


@pytest.mark.parametrize(
    "target", ["../other/1.0", "/etc", "..", ".", "1.0/../../other/1.0", "", ".state.json"]
)
def test_a_pointer_leading_out_of_the_plugins_folder_is_never_followed(
    tmp_path: Path, target: str
) -> None:
    _fake(tmp_path, "other", "1.0")
    root = tmp_path / "plugins" / "evil"
    root.mkdir(parents=True)
    _pointers(root, target)
    assert installed(tmp_path, "evil") is None
    evil = _fake(tmp_path, "evil2", "1.0")
    _pointers(evil, "1.0", target)
    assert installed(tmp_path, "evil2") is not None
    assert previous(tmp_path, "evil2") is None


def test_a_state_file_that_is_a_symlink_is_never_followed(tmp_path: Path) -> None:
    _fake(tmp_path, "other", "1.0")
    root = tmp_path / "plugins" / "evil"
    (root / "1.0").mkdir(parents=True)
    os.symlink(tmp_path / "plugins" / "other" / ".state.json", root / ".state.json")
    with pytest.raises(PackageError, match="cannot be read"):
        installed(tmp_path, "evil")


def test_a_state_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "plugins" / "evil"
    root.mkdir(parents=True)
    os.mkfifo(root / ".state.json")
    with pytest.raises(PackageError, match="not a regular file"):
        installed(tmp_path, "evil")


def test_a_malformed_state_file_is_a_package_error_naming_it(tmp_path: Path) -> None:
    root = _fake(tmp_path, "bad", "1.0")
    (root / ".state.json").write_text('{"current": "1.0", "extra": 1}')
    with pytest.raises(PackageError) as info:
        installed(tmp_path, "bad")
    assert str(root / ".state.json") in info.value.message


def test_a_plugin_folder_that_is_a_symlink_is_never_followed(tmp_path: Path) -> None:
    _fake(tmp_path, "other", "1.0")
    os.symlink(tmp_path / "plugins" / "other", tmp_path / "plugins" / "alias")
    assert installed(tmp_path, "other") is not None
    assert installed(tmp_path, "alias") is None
    assert [p.plugin_id for p in list_installed(tmp_path)] == ["other"]


def test_a_record_whose_paths_point_elsewhere_gets_the_layouts_paths_or_is_refused(
    tmp_path: Path,
) -> None:
    _fake(tmp_path, "liar", "1.0", plugin_dir="/etc")
    record = installed(tmp_path, "liar")
    assert record is not None
    assert record.plugin_dir == str((tmp_path / "plugins" / "liar" / "1.0").resolve())
    _fake(tmp_path, "escapee", "1.0", env_key="k", site_packages="/usr/lib/python3")
    with pytest.raises(PackageError, match="not inside its environment"):
        installed(tmp_path, "escapee")


def test_a_record_describing_another_plugin_is_refused(tmp_path: Path) -> None:
    _fake(tmp_path, "first", "1.0", plugin_id="second")
    with pytest.raises(PackageError, match="describes second"):
        installed(tmp_path, "first")
