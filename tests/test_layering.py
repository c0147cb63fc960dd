"""The package boundaries the architecture depends on, checked in fresh interpreters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_architecture import RANKS


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    return set(json.loads(out.stdout))


def test_the_protocol_imports_neither_side() -> None:
    mods = _modules_after("import cordon.protocol")
    assert not {m for m in mods if m.startswith(("cordon.runtime", "cordon.worker"))}


@pytest.mark.parametrize("entry", ["import cordon.worker", "import cordon.worker._launch"])
def test_the_worker_imports_nothing_of_the_host_and_stays_lean(entry: str) -> None:
    mods = _modules_after(entry)
    assert not {m for m in mods if m.startswith("cordon.runtime")}
    # No anyio, structlog or psutil inside the sandbox: start-up cost and attack surface.
    assert not mods & {"anyio", "structlog", "psutil", "sqlite3"}


def test_loading_a_manifest_imports_no_plugin_code() -> None:
    mods = _modules_after(
        "from cordon.runtime import load_manifest\n"
        "load_manifest('examples/plugins/hello')\n"
        "load_manifest('examples/plugins/crashy')"
    )
    assert "hello_plugin" not in mods
    assert "crashy_plugin" not in mods


def test_the_wheel_installs_the_four_cordon_packages_and_nothing_bare(tmp_path: Path) -> None:
    # Built from the committed file list, as a fresh clone would be: a stray build/ or
    # .venv/ in the checkout must not hide what the package-dir mapping really ships.
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    src = tmp_path / "src"
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.is_file():
            (src / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name.decode())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("cordon-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    folders = {n.rsplit("/", 1)[0] for n in names if not n.startswith("cordon-")}
    assert folders == {
        "cordon/protocol",
        "cordon/runtime",
        "cordon/worker",
        "cordon/worker/_sandbox",
        "cordon/testing",
        # The host's rooms (runtime/<room>/) in the tracked files, each its own subpackage.
        *(f"cordon/runtime/{room}" for room in RANKS if (src / "runtime" / room).is_dir()),
    }
    assert "cordon/__init__.py" not in names  # a namespace: other distributions may add to it
    assert "cordon/testing/__init__.py" in names
    for package in ("protocol", "runtime", "worker", "testing"):
        assert f"cordon/{package}/py.typed" in names
