"""A real registry for the tests: ``cordon registry serve --port 0`` in a subprocess, ready
when it prints its URL (the socket is listening by then), stopped (SIGTERM, then SIGKILL
after a deadline) however the test ends."""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.packages.installing import CORDON

__all__ = ["Server", "make_token", "running_registry"]

#: Starting Python, importing Starlette and uvicorn, opening SQLite: seconds on a busy box.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass
class Server:
    url: str
    data: Path
    proc: subprocess.Popen[str]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def token(self, *scope: str, expires_days: float | None = None) -> str:
        return make_token(self.data, *scope, expires_days=expires_days)


def make_token(data: Path, *scope: str, expires_days: float | None = None) -> str:
    args = [CORDON, "registry", "token", "create", "--data", str(data)]
    for s in scope:
        args += ["--scope", s]
    if expires_days is not None:
        args += ["--expires-days", str(expires_days)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@contextmanager
def running_registry(data: Path) -> Iterator[Server]:
    log = data.parent / f"{data.name}-server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [CORDON, "registry", "serve", "--data", str(data), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        assert ready, f"the registry did not start within {READY_TIMEOUT} s: {log.read_text()}"
        line = proc.stdout.readline()
        assert line.startswith("cordon registry serving"), (line, log.read_text())
        yield Server(url=line.split()[-1], data=data, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        proc.stdout.close()


def error_of(body: bytes) -> dict[str, object]:
    """The ``error`` object of a registry's JSON error body (fails if it is not one)."""
    doc = json.loads(body)
    err = doc["error"]
    assert isinstance(err, dict) and {"code", "message", "status"} <= set(err), doc
    return err
