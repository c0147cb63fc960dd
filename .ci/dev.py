#!/usr/bin/env python3
"""Bootstrap and run cordon's two everyday jobs with nothing but python3.

    python3 .ci/dev.py demo    # the demo host: loads examples/plugins under examples/cordon.toml
    python3 .ci/dev.py test    # ruff, mypy --strict, the test suite, then the launcher-,
                               # sandbox- and call-suites again on the fallback paths

    python3 .ci/dev.py test --repeat 5 [--load]   # the suite 5 times in a row (optionally with
                                                  # a busy loop on every CPU), counts per run

The first run creates `.venv/` and installs cordon into it in *strict* editable mode: the
default editable mode maps `cordon.*` through an import hook that mypy cannot follow.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def _take_option(rest: list[str], name: str, *, value: bool) -> str | None:
    """Remove ``name`` (and its value) from ``rest``; pytest never sees our own options."""
    if name not in rest:
        return None
    i = rest.index(name)
    if not value:
        del rest[i]
        return name
    if i + 1 >= len(rest):
        sys.exit(f"{name} needs a value")
    found = rest[i + 1]
    del rest[i : i + 2]
    return found


_SUMMARY = re.compile(r"^(?:=+ )?(?P<counts>.*\b(passed|failed|error)\b.*) in [0-9.]+s")


def repeat_suite(times: int, load: bool, rest: list[str]) -> int:
    """Run pytest ``times`` times in a row and print one line per run: a flaky test shows up
    as a run that is not like the others. ``load`` keeps every CPU busy meanwhile, the way
    a shared CI machine is (a test that needs an idle machine is a flaky test)."""
    spin = [sys.executable, "-c", "while True: pass"]
    hogs = [subprocess.Popen(spin) for _ in range(os.cpu_count() or 1)] if load else []
    clean = 0
    worst = 0
    try:
        for i in range(1, times + 1):
            proc = subprocess.run(
                [str(PY), "-m", "pytest", "-q", "-p", "no:cacheprovider", *rest],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            out = proc.stdout.splitlines()
            summary = next(
                (m["counts"] for m in map(_SUMMARY.match, reversed(out)) if m),
                f"no summary (exit {proc.returncode})",
            )
            print(f"run {i}: {summary}", flush=True)
            if proc.returncode:
                worst = worst or proc.returncode
                for line in out:
                    if line.startswith(("FAILED", "ERROR")):
                        print(f"    {line}", flush=True)
                # The whole report of a failed run, to read why: one line says only which.
                log = Path(tempfile.gettempdir()) / f"cordon-repeat-{os.getpid()}-{i}.log"
                log.write_text(proc.stdout + proc.stderr)
                print(f"    full output: {log}", flush=True)
            else:
                clean += 1
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"repeat: {clean} of {times} runs clean{' (machine loaded)' if load else ''}")
    return worst


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
    repeat = _take_option(rest, "--repeat", value=True)
    load = _take_option(rest, "--load", value=False) is not None
    if repeat is not None:
        return repeat_suite(int(repeat), load, rest)
    rc = run(str(PY), "-m", "pytest", *rest)
    if rc or rest:
        # Arguments name what to run: the second pass is part of the whole suite only.
        return rc
    return second_pass()


#: The first pass runs workers as the defaults start them: forked by the zygote, with the
#: event loops' private shortcuts on. These suites run again on the other path of both —
#: spawned workers, public asyncio API only — so the fallbacks stay as tested as the
#: defaults (issue 17): the sandbox and quotas for the launcher, calls, cancellation and
#: crashes for the loop.
SECOND_PASS_ENV: dict[str, str] = {"CORDON_LAUNCHER": "spawn", "CORDON_LOOP_SHORTCUTS": "0"}
SECOND_PASS_TESTS = (
    "tests/sandbox",
    "tests/test_quotas.py",
    "tests/test_cgroups.py",
    "tests/test_spares.py",
    "tests/test_crashes.py",
    "tests/test_calls.py",
    "tests/test_cancellation.py",
    "tests/test_call_deadline.py",
    "tests/test_supervision.py",
    "tests/test_wire.py",
    "tests/test_perf_paths.py",
    "tests/test_pipelined_start.py",
    "tests/test_worker_reliability.py",
    "tests/test_large_payloads.py",
)


def second_pass() -> int:
    shown = " ".join(f"{k}={v}" for k, v in SECOND_PASS_ENV.items())
    print(f"second pass, {shown}: {' '.join(SECOND_PASS_TESTS)}", flush=True)
    env = {**os.environ, **SECOND_PASS_ENV}
    return subprocess.call([str(PY), "-m", "pytest", "-q", *SECOND_PASS_TESTS], cwd=ROOT, env=env)


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    sys.exit(main())
