"""Installed distributions' plugins, through a real ``cordon run``: a manifest ``entry`` may name
the package's own module path (``greeter_pkg.core:plugin``), and the operator can switch entry
points off (``--no-entry-points``, ``[runtime] entry-points = false``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cordon.protocol._entry import split_entry_module
from cordon.runtime import load_manifest
from tests.test_discovery import install_bare

CORDON = str(Path(sys.executable).parent / "cordon")
#: One host: start, load, one call in a sandboxed worker, stop.
HOST_TIMEOUT = 120.0

CORE = """
from cordon.worker import Context, Plugin

from . import words  # a relative import: only works when imported as greeter_pkg.core
from greeter_pkg.words import PUNCT  # and an absolute one through the package

plugin = Plugin()


@plugin.tool
async def greet(ctx: Context, name: str) -> str:
    return f"{words.GREETING} {name}{PUNCT} ({__name__})"
"""


def make_dist(root: Path, entry: str = "greeter_pkg.core:plugin") -> Path:
    """A distribution laid out in ``root/site`` as an installer leaves it, its plugin.toml
    naming the entry through the package; returns the site folder."""
    tree = root / "tree"
    pkg = tree / "greeter_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("INITIALISED = True\n")
    (pkg / "words.py").write_text('GREETING = "Howdy"\nPUNCT = "!"\n')
    (pkg / "core.py").write_text(CORE)
    (pkg / "plugin.toml").write_text(
        textwrap.dedent(
            f"""\
            [plugin]
            id = "greeter"
            name = "Greeter"
            version = "1.0.0"
            entry = "{entry}"
            [contributes]
            tools = [{{ name = "greet", description = "Greet." }}]
            """
        )
    )
    site = root / "site"
    install_bare(site, "cordon-greeter", {"greeter": "greeter_pkg"}, tree=tree)
    return site


def serve(root: Path, site: Path, *args: str, config: str = "") -> list[dict[str, Any]]:
    """``cordon run --no-socket`` with ``site`` on its path, asked for its plugins and one
    greeting on stdin; the answers by id."""
    (root / "cordon.toml").write_text(f'[runtime]\nstate-dir = "state"\n{config}')
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "plugins"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "call",
            "params": {"plugin": "greeter", "name": "greet", "arguments": {"name": "Ada"}},
        },
    ]
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run(
        [CORDON, "run", "--no-socket", *args],
        input="".join(json.dumps(q) + "\n" for q in requests),
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=HOST_TIMEOUT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    return sorted((a for a in answers if "id" in a), key=lambda a: a["id"])


def test_an_installed_plugin_whose_entry_names_its_package_path_runs(tmp_path: Path) -> None:
    site = make_dist(tmp_path)
    plugins, greeting = serve(tmp_path, site)
    assert [p["id"] for p in plugins["result"]] == ["greeter"]
    # Imported as the package's own module, so its relative and absolute imports work.
    assert greeting.get("result") == "Howdy Ada! (greeter_pkg.core)", greeting


def test_the_operator_can_switch_entry_points_off_by_flag_or_config(tmp_path: Path) -> None:
    site = make_dist(tmp_path)
    for args, config in ((["--no-entry-points"], ""), ([], "entry-points = false\n")):
        plugins, greeting = serve(tmp_path, site, *args, config=config)
        assert plugins["result"] == []
        assert greeting["error"]["data"]["type"] == "PluginUnavailable"


def test_the_manifest_check_finds_a_package_path_entry_and_names_a_missing_one(
    tmp_path: Path,
) -> None:
    folder = make_dist(tmp_path) / "greeter_pkg"
    assert load_manifest(folder).entry == "greeter_pkg.core:plugin"
    other = make_dist(tmp_path / "other", entry="greeter_pkg.nope:plugin") / "greeter_pkg"
    from cordon.runtime import ManifestError

    with pytest.raises(ManifestError, match="nope"):
        load_manifest(other)


@pytest.mark.parametrize(
    ("module", "folder", "expected"),
    [
        ("core", "/s/greeter_pkg", ((), ("core",))),
        ("greeter_pkg.core", "/s/greeter_pkg", (("greeter_pkg",), ("core",))),
        ("a.b.core", "/s/a/b", (("a", "b"), ("core",))),
        ("b.core", "/s/a/b", (("b",), ("core",))),
        ("sub.core", "/s/greeter_pkg", ((), ("sub", "core"))),
        ("greeter_pkg", "/s/greeter_pkg", ((), ("greeter_pkg",))),
    ],
)
def test_an_entry_module_is_read_relative_to_the_folder_or_through_its_package_path(
    module: str, folder: str, expected: tuple[tuple[str, ...], tuple[str, ...]]
) -> None:
    assert split_entry_module(module, folder) == expected


def test_a_folder_holding_the_first_name_itself_is_read_relative(tmp_path: Path) -> None:
    # src-like layout: greeter_pkg/greeter_pkg/core.py is the relative reading, as before.
    folder = tmp_path / "greeter_pkg"
    (folder / "greeter_pkg").mkdir(parents=True)
    assert split_entry_module("greeter_pkg.core", folder) == ((), ("greeter_pkg", "core"))


def test_plugin_list_follows_the_entry_points_setting(tmp_path: Path) -> None:
    site = make_dist(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site)}

    def listed(config: str) -> list[str]:
        (tmp_path / "cordon.toml").write_text(f'[runtime]\nstate-dir = "state"\n{config}')
        r = subprocess.run(
            [CORDON, "plugin", "list", "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=HOST_TIMEOUT,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        return [row["id"] for row in json.loads(r.stdout)]

    assert listed("") == ["greeter"]
    assert listed("entry-points = false\n") == []
