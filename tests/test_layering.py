"""The package boundaries the architecture depends on, checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


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
