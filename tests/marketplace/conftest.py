from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cordon.runtime._packages._archive import pack
from tests.marketplace.serving import Server, running_registry
from tests.packages.installing import plugin_folder


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Server]:
    with running_registry(tmp_path / "registry") as server:
        yield server


def package(
    tmp_path: Path,
    plugin_id: str,
    version: str = "1.0.0",
    *,
    permissions: tuple[str, ...] = ("log",),
    description: str = "",
    readme: str = "",
) -> Path:
    """A real ``.cordon`` package of a tiny plugin (tool ``which`` returns its version)."""
    folder = plugin_folder(tmp_path / "src", plugin_id, version, permissions=permissions)
    # An id may hold "-", a module name may not: the entry module gets a fixed name.
    (folder / f"{plugin_id}_main.py").rename(folder / "entry_main.py")
    manifest = folder / "plugin.toml"
    manifest.write_text(
        manifest.read_text().replace(f'"{plugin_id}_main:plugin"', '"entry_main:plugin"')
    )
    if description:
        manifest = folder / "plugin.toml"
        text = manifest.read_text().replace(
            "[plugin]\n", f"[plugin]\ndescription = {description!r}\nkeywords = ['demo']\n", 1
        )
        manifest.write_text(text)
    if readme:
        (folder / "README.md").write_text(readme)
    return pack(folder, tmp_path / "dist")
