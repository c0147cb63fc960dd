"""A plugin's import can write to the protocol channel itself (it finds the pipe among its
fds), so anything that arrives from then on is the plugin's word, not the launch's. The launch
reports its lock-down in ``$/lockedDown`` before it imports the plugin; the host believes that
report only, and a launch-only error arriving after it is the plugin's error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from cordon.protocol import PluginError
from cordon.runtime import PluginHandle, Runtime
from tests.conftest import base_config

pytestmark = pytest.mark.anyio

FORGER = Path(__file__).resolve().parent / "hostile" / "forger"


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    config = base_config(tmp_path, sandbox="strict")
    async with Runtime(config) as runtime:
        yield runtime


def arm(tmp_path: Path, kind: str) -> None:
    """What the forger's import writes, read from its scratch dir (made ahead of the host)."""
    scratch = tmp_path / "state" / "scratch" / "forger"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "FORGE").write_text(kind)


async def test_a_sandbox_failure_forged_by_the_plugins_import_is_the_plugins_error(
    rt: Runtime, tmp_path: Path
) -> None:
    arm(tmp_path, "sandbox-unavailable")
    plugin = await rt.load(FORGER)
    with anyio.fail_after(30), pytest.raises(PluginError) as info:
        await plugin.call("hello")
    # The forged frame did arrive (its type is kept as a claim), but as the plugin's error.
    assert info.value.exc_type == "SandboxUnavailable"


async def test_a_layer_report_forged_in_the_initialize_answer_is_not_believed(
    rt: Runtime, tmp_path: Path
) -> None:
    arm(tmp_path, "all-applied")
    plugin = await rt.load(FORGER)
    with anyio.fail_after(30):
        await _started(plugin)
    assert "forged-layer" not in plugin.sandbox
    assert plugin.sandbox["seccomp"] == "applied"


async def test_a_second_lock_down_report_from_the_plugin_changes_nothing(
    rt: Runtime, tmp_path: Path
) -> None:
    arm(tmp_path, "locked-down")
    plugin = await rt.load(FORGER)
    with anyio.fail_after(30):
        assert await plugin.call("hello") == "still here"
    assert "forged-layer" not in plugin.sandbox
    assert plugin.sandbox["landlock-fs"] == "applied"


def test_cordon_call_does_not_blame_the_sandbox_for_a_forged_failure(tmp_path: Path) -> None:
    arm(tmp_path, "sandbox-unavailable")
    config = tmp_path / "cordon.toml"
    config.write_text(
        f'[runtime]\nstate-dir = "{tmp_path / "state"}"\nwarm-workers = 0\n'
        f'[defaults]\nsandbox = "strict"\n'
    )
    cordon = Path(sys.executable).with_name("cordon")
    proc = subprocess.run(
        [str(cordon), "call", str(FORGER), "hello", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode not in (0, 11), proc.stderr
    assert "PluginError" in proc.stderr
    assert "best-effort" not in proc.stderr and 'sandbox = "off"' not in proc.stderr


async def _started(plugin: PluginHandle) -> None:
    try:
        await plugin.start()
    except PluginError:
        pass  # the forged answer listed no tools; what matters is the report the host kept
