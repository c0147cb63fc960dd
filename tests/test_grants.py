"""Permissions end to end: requested in the manifest, granted by the operator, enforced by
the host, recorded in the audit trail and readable with `cordon audit`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import structlog

from cordon.runtime import PermissionDenied, Runtime
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.anyio

NOTIFIER = EXAMPLES / "notifier"


def _config(tmp_path: Path, **notifier: object) -> dict[str, object]:
    return {
        "runtime": {"state-dir": str(tmp_path / "state")},
        "plugins": {"notifier": dict(notifier)},
    }


async def test_an_ungranted_permission_loads_with_a_warning_and_the_call_is_denied(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        with structlog.testing.capture_logs() as logs:
            async with Runtime(_config(tmp_path, grant=["log"])) as rt:
                notifier = await rt.load(NOTIFIER)
                with pytest.raises(PermissionDenied) as info:
                    await notifier.call("last_event")
                trail = await rt.audit("notifier")
    assert (info.value.permission, info.value.plugin) == ("storage", "notifier")
    warning = next(e for e in logs if e["event"] == "plugin.permissions_missing")
    assert "storage" in warning["missing"]
    denied = [e for e in trail if not e.allowed]
    assert denied
    assert denied[0].method == "host/storage.get"


async def test_strict_permissions_refuses_to_load_a_plugin_asking_for_more(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, grant=["log"])
    config["runtime"] = {"state-dir": str(tmp_path / "state"), "strict-permissions": True}
    with anyio.fail_after(30):
        async with Runtime(config) as rt:
            with pytest.raises(PermissionDenied) as info:
                await rt.load(NOTIFIER)
            assert "notifier" not in rt.plugins
    assert "strict-permissions" in (info.value.message or "")


async def test_deny_wins_over_grant(tmp_path: Path) -> None:
    cfg = _config(tmp_path, grant=["log", "storage", "events:subscribe:build.*"], deny=["storage"])
    with anyio.fail_after(30):
        async with Runtime(cfg) as rt:
            notifier = await rt.load(NOTIFIER)
            assert "storage" not in notifier.permissions.effective
            with pytest.raises(PermissionDenied):
                await notifier.call("last_event")


async def test_granted_calls_work_and_cordon_audit_shows_them(tmp_path: Path) -> None:
    grants = ["log", "storage", "events:subscribe:build.*"]
    with anyio.fail_after(30):
        async with Runtime(_config(tmp_path, grant=grants)) as rt:
            notifier = await rt.load(NOTIFIER)
            assert await notifier.call("last_event") is None
    toml = tmp_path / "cordon.toml"
    toml.write_text(f'[runtime]\nstate-dir = "{tmp_path / "state"}"\n')
    cordon = str(Path(sys.executable).parent / "cordon")
    r = subprocess.run(
        [cordon, "audit", "notifier", "--json", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    assert any(e["method"] == "host/storage.get" and e["allowed"] for e in entries)
