#!/usr/bin/env python3
"""Bootstrap and run cordon's two everyday jobs with nothing but python3.

    python3 .ci/dev.py demo    # the demo host: loads examples/plugins under examples/cordon.toml
    python3 .ci/dev.py test    # ruff, mypy --strict, then the test suite

The first run creates `.venv/` and installs cordon into it in *strict* editable mode: the
default editable mode maps `cordon.*` through an import hook that mypy cannot follow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".cordon-install-stamp"
#: cordon's packages and the folders they install from (pyproject.toml's package-dir).
PACKAGE_FOLDERS = {
    "runtime": "runtime",
    "worker": "worker",
    "protocol": "protocol",
    "testing": "runtime/testing",
}


def _source_fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def _link_whole_folders() -> None:
    # Strict editable mode links each *file* at install time, so a module added later would
    # be invisible until a reinstall. Linking each package folder as a whole keeps the
    # property we want (a real `cordon/` tree on sys.path that mypy follows) without that.
    for tree in (ROOT / "build").glob("__editable__.cordon-*"):
        for name, folder in PACKAGE_FOLDERS.items():
            link = tree / "cordon" / name
            if link.is_symlink():
                continue
            if link.exists():
                shutil.rmtree(link)
            link.symlink_to(ROOT / folder, target_is_directory=True)


def ensure_env() -> None:
    if not PY.exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    fingerprint = _source_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    print("installing cordon (editable, strict) ...", file=sys.stderr)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run(
        [*pip, "-e", f"{ROOT}[dev]", "--config-settings", "editable_mode=strict"],
        check=True,
        cwd=ROOT,
    )
    _link_whole_folders()
    STAMP.write_text(fingerprint)


def run(*argv: str) -> int:
    return subprocess.run(argv, cwd=ROOT).returncode


def main() -> int:
    job = sys.argv[1] if len(sys.argv) > 1 else "help"
    rest = sys.argv[2:]
    if job not in {"demo", "test", "env", "lint", "bench"}:
        print(__doc__)
        return 2
    ensure_env()
    if job == "env":
        return 0
    if job == "demo":
        return run(str(PY), str(ROOT / "examples" / "demo_host.py"), *rest)
    if job == "bench":
        return run(str(PY), str(ROOT / "benchmarks" / "run.py"), *rest)
    for check in (
        [str(PY), "-m", "ruff", "check", "."],
        [str(PY), "-m", "ruff", "format", "--check", "."],
        [str(PY), "-m", "mypy"],  # the packages named in pyproject.toml
        [str(PY), "-m", "mypy", "tests", "benchmarks", "examples"],
    ):
        rc = run(*check)
        if rc:
            print(f"FAILED: {' '.join(check[1:])}", file=sys.stderr)
            return rc
    if job == "lint":
        return 0
    return run(str(PY), "-m", "pytest", *rest)


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    sys.exit(main())
