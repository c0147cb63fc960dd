"""Shared fixtures: a runtime per test in its own state dir, and a leak check on every test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cordon.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "plugins"
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    """Pipes to dead workers, database handles, sockets: a test closes what it opened."""
    before = _open_fds()
    yield
    leaked = _open_fds() - before
    details = {}
    for fd in leaked:
        try:
            details[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own fd, say)
    assert not details, f"test leaked file descriptors: {details}"


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Every test must leave no worker behind: cordon's core promise. The check is the one
    cordon.testing ships to users (imported here, not at the top: test_testing loads that
    module as a pytest plugin during collection, and a module imported earlier would miss
    pytest's assert rewriting)."""
    from cordon.testing import _children, leaked_workers

    before = _children()
    yield
    leaked = leaked_workers(before)
    assert not leaked, f"test leaked worker processes: {leaked}"


def base_config(tmp_path: Path, **defaults: object) -> dict[str, object]:
    """A config for tests: state in tmp_path, quick health checks."""
    d: dict[str, object] = {"call-timeout": "10 s", "max-call-timeout": "60 s"}
    d.update({k.replace("_", "-"): v for k, v in defaults.items()})
    # No warm spares: one more process per runtime for every test would slow the suite by
    # half; tests/test_spares.py covers them, and runtimes not built from here keep them.
    return {"runtime": {"state-dir": str(tmp_path / "state"), "warm-workers": 0}, "defaults": d}


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    async with Runtime(base_config(tmp_path)) as runtime:
        yield runtime


@pytest.fixture
def hello_dir() -> Path:
    return EXAMPLES / "hello"


@pytest.fixture
def crashy_dir() -> Path:
    return EXAMPLES / "crashy"


@pytest.fixture
def probe_dir() -> Path:
    return TEST_PLUGINS / "probe"


__all__ = ["EXAMPLES", "ROOT", "TEST_PLUGINS", "base_config", "os"]
