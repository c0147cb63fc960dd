"""The registry's stack is an optional extra: the core install never imports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("starlette", "uvicorn", "httpx2", "httpcore2", "h11")


def _imported_after(code: str, cwd: Path) -> list[str]:
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    r = subprocess.run(
        [sys.executable, "-I", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    assert r.returncode == 0, r.stderr
    found: list[str] = json.loads(r.stdout.strip().splitlines()[-1])
    return found


def test_importing_the_runtime_and_the_cli_loads_no_server_or_http_client(tmp_path: Path) -> None:
    assert _imported_after("import cordon.runtime", tmp_path) == []
    code = "from cordon.runtime._cli._main import _parser; _parser()"
    assert _imported_after(code, tmp_path) == []
    code = "import cordon.runtime._marketplace._errors, cordon.runtime._marketplace._trust"
    assert _imported_after(code, tmp_path) == []
