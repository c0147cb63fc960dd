"""The README's main job: the demo host, under the example operator config."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from cordon.runtime import load_config, load_manifest
from cordon.runtime._settings._permissions import effective_permissions
from tests.conftest import EXAMPLES, ROOT


def test_the_example_config_grants_every_example_plugin_what_it_requests() -> None:
    cfg = load_config(ROOT / "examples" / "cordon.toml")
    for plugin_dir in sorted(p for p in EXAMPLES.iterdir() if (p / "plugin.toml").exists()):
        m = load_manifest(plugin_dir)
        s = cfg.for_plugin(m.id)
        assert effective_permissions(m.permissions, s.grant, s.deny).missing == (), m.id
        assert s.sandbox == "strict"


def test_the_demo_runs_contains_a_crash_and_leaves_nothing_running(tmp_path: Path) -> None:
    raw = tomllib.loads((ROOT / "examples" / "cordon.toml").read_text())
    text = (ROOT / "examples" / "cordon.toml").read_text()
    text = text.replace('plugin-dirs = ["plugins"]', f'plugin-dirs = ["{EXAMPLES}"]')
    text = text.replace(
        f'state-dir = "{raw["runtime"]["state-dir"]}"', f'state-dir = "{tmp_path / "state"}"'
    )
    config = tmp_path / "cordon.toml"
    config.write_text(text)
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo_host.py"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "hello.greet(name='Ada', excited=True) -> 'Hello Ada!'" in out
    assert "an in-flight call:  WorkerCrashed (reason=exited, exit code 3)" in out
    assert "crashy.ok() -> 'ok'" in out
    assert "CallTimeout" in out
    assert out.rstrip().endswith("nothing left running.")
