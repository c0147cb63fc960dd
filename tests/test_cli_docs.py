"""What the command line and the README promise agree with the code: one exit-code table,
every error the README names importable, readable audit times."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

import cordon.runtime
from cordon.runtime._cli._exitcodes import TABLE, markdown_table
from cordon.runtime._cli._main import EXIT_CODES
from cordon.runtime._hostapi._audit import AuditTrail, iso8601
from tests.conftest import ROOT

CORDON = str(Path(sys.executable).parent / "cordon")
README = (ROOT / "README.md").read_text(encoding="utf-8")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CORDON, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


# -- exit codes -----------------------------------------------------------------------------------


def test_the_readme_exit_code_table_is_the_one_in_the_code() -> None:
    assert markdown_table() in README


def test_cordon_help_lists_every_exit_code_the_readme_does(tmp_path: Path) -> None:
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    listed = [
        int(m) for m in re.findall(r"^\s+(\d+)\s{2}\S", r.stdout.split("exit codes:")[1], re.M)
    ]
    in_readme = [int(m) for m in re.findall(r"^\| (\d+) \|", README, re.M)]
    assert listed == in_readme == [row.code for row in TABLE]


def test_every_error_class_exits_with_the_code_its_row_names() -> None:
    for row in TABLE:
        for cls in row.errors:
            assert (cls, row.code) in EXIT_CODES
            assert f"`{cls.__name__}`" in row.meaning


# -- errors importable --------------------------------------------------------------------------


_CLASS = re.compile(r"`([A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)`")


def _readme_class_names() -> set[str]:
    """Every `CamelCase` name the README shows in backticks (not `EACCES`-style constants)."""
    return set(_CLASS.findall(README))


def _readme_host_error_names() -> set[str]:
    """The errors the README gives the host's caller: its exit-code table, and its list of
    `cordon.runtime.CordonError` subclasses."""
    table = [line for line in README.splitlines() if re.match(r"^\| \d+ \|", line)]
    start = README.index("Every error is a subclass of `cordon.runtime.CordonError`")
    paragraph = README[start : README.index("\n\n", start)]
    return set(_CLASS.findall("\n".join(table))) | set(_CLASS.findall(paragraph))


def test_every_error_the_readme_gives_the_host_is_importable_from_cordon_runtime() -> None:
    names = _readme_host_error_names()
    assert {"DependencyError", "HostNotRunning", "ScaffoldError", "PluginError"} <= names
    missing = sorted(n for n in names if n not in cordon.runtime.__all__)
    assert not missing, f"named in the README, not importable from cordon.runtime: {missing}"
    for name in names:
        cls = getattr(cordon.runtime, name)
        assert isinstance(cls, type) and issubclass(cls, BaseException), name


def test_every_class_the_readme_names_exists_in_a_cordon_package() -> None:
    import builtins

    import cordon.protocol
    import cordon.testing
    import cordon.worker

    packages = (cordon.runtime, cordon.worker, cordon.protocol, cordon.testing)
    for name in sorted(_readme_class_names() - set(dir(builtins))):
        assert any(hasattr(pkg, name) for pkg in packages), (
            f"the README names {name}, which no cordon package exports"
        )


def test_every_error_in_the_exit_code_table_is_exported_and_an_exception() -> None:
    for row in TABLE:
        for name in re.findall(r"`([A-Z][A-Za-z0-9]+)`", row.meaning):
            cls = getattr(cordon.runtime, name)
            assert isinstance(cls, type) and issubclass(cls, BaseException), name


def test_the_named_errors_import_in_a_fresh_interpreter(tmp_path: Path) -> None:
    code = "from cordon.runtime import DependencyError, HostNotRunning, ScaffoldError; print('ok')"
    r = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert r.stdout.strip() == "ok", r.stderr


# -- audit times -------------------------------------------------------------------------------


def test_iso8601_is_utc_to_the_millisecond() -> None:
    assert iso8601(1_795_947_867.123_4) == "2026-11-29T10:24:27.123Z"
    assert iso8601(0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.anyio
async def test_cordon_audit_prints_iso_times_and_json_keeps_epoch_seconds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    async with await AuditTrail.open(state / "audit.db") as audit:
        await audit.record("p1", "host/storage.get", "key='a'", allowed=True)
    (tmp_path / "cordon.toml").write_text('[runtime]\nstate-dir = "state"\n')

    text = run_cli("audit", "p1", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    (line,) = text.stdout.splitlines()
    stamp = line.split()[0]
    assert ISO_UTC.match(stamp), line

    raw = run_cli("audit", "p1", "--json", cwd=tmp_path)
    assert raw.returncode == 0, raw.stderr
    (entry,) = json.loads(raw.stdout)
    assert isinstance(entry["ts"], float)  # machine-readable: seconds since the epoch
    assert entry["time"] == stamp
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    assert abs(parsed - entry["ts"]) < 0.001
