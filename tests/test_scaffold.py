"""``cordon new plugin``: the scaffold writes a plugin that validates, compiles, and runs in the
real sandbox, and never overwrites anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from cordon.runtime import Runtime
from cordon.runtime._cli._scaffold import ScaffoldError, scaffold_plugin
from cordon.runtime._platform._versions import CORDON_VERSION, satisfies
from cordon.runtime._settings._manifest import check_cordon_compat, load_manifest
from tests.conftest import base_config


def test_scaffold_writes_manifest_module_test_and_readme(tmp_path: Path) -> None:
    plugin = scaffold_plugin("hello", tmp_path)
    assert plugin == tmp_path / "hello"
    assert sorted(p.name for p in plugin.iterdir()) == [
        "README.md",
        "hello_plugin.py",
        "plugin.toml",
        "test_hello_plugin.py",
    ]


def test_the_generated_manifest_parses_and_accepts_this_cordon(tmp_path: Path) -> None:
    manifest = load_manifest(scaffold_plugin("hello", tmp_path))
    assert manifest.id == "hello"
    assert manifest.name == "Hello"
    assert manifest.version == "0.1.0"
    assert manifest.entry == "hello_plugin:plugin"
    assert manifest.permissions == ("log",)
    assert [t.name for t in manifest.contributes.tools] == ["greet"]
    assert satisfies(CORDON_VERSION, manifest.requires_cordon)
    check_cordon_compat(manifest, CORDON_VERSION)


def test_the_generated_requirement_excludes_the_next_breaking_cordon(tmp_path: Path) -> None:
    from packaging.version import Version

    manifest = load_manifest(scaffold_plugin("hello", tmp_path))
    v = Version(CORDON_VERSION)
    next_breaking = f"{v.major + 1}.0" if v.major else f"0.{v.minor + 1}"
    assert not satisfies(next_breaking, manifest.requires_cordon)


def test_the_generated_python_files_compile(tmp_path: Path) -> None:
    plugin = scaffold_plugin("hello", tmp_path)
    for name in ("hello_plugin.py", "test_hello_plugin.py"):
        source = (plugin / name).read_text()
        compile(source, name, "exec")


def test_a_hyphenated_id_gets_an_importable_module_and_a_readable_name(tmp_path: Path) -> None:
    plugin = scaffold_plugin("kube-pods", tmp_path)
    manifest = load_manifest(plugin)
    assert manifest.name == "Kube Pods"
    assert manifest.entry == "kube_pods_plugin:plugin"
    assert (plugin / "test_kube_pods_plugin.py").is_file()


def test_an_id_already_ending_in_plugin_is_not_suffixed_twice(tmp_path: Path) -> None:
    manifest = load_manifest(scaffold_plugin("docker_plugin", tmp_path))
    assert manifest.entry == "docker_plugin:plugin"


def test_the_destination_folder_is_created_when_missing(tmp_path: Path) -> None:
    plugin = scaffold_plugin("hello", tmp_path / "a" / "b")
    assert (plugin / "plugin.toml").is_file()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("My Tool", "my-tool"),
        ("Hello", "hello"),
        ("1st", "st"),
        ("", None),
        ("-", None),
        ("a" * 65, "a" * 64),
        ("../escape", "escape"),
        ("café", "caf"),
    ],
)
def test_an_invalid_name_is_refused_with_the_rule_and_a_suggestion(
    tmp_path: Path, name: str, suggestion: str | None
) -> None:
    with pytest.raises(ScaffoldError) as info:
        scaffold_plugin(name, tmp_path)
    err = info.value
    assert err.name == name
    assert "lower-case letter" in err.message
    if suggestion is not None:
        assert f'try "{suggestion}"' in err.message
    else:
        assert "try" not in err.message
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    existing = tmp_path / "hello"
    existing.mkdir()
    (existing / "plugin.toml").write_text("mine")
    with pytest.raises(ScaffoldError) as info:
        scaffold_plugin("hello", tmp_path)
    assert info.value.path == str(existing)
    assert "already exists" in info.value.message
    assert (existing / "plugin.toml").read_text() == "mine"
    assert [p.name for p in existing.iterdir()] == ["plugin.toml"]


def test_an_existing_file_with_the_plugin_name_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("a file")
    with pytest.raises(ScaffoldError):
        scaffold_plugin("hello", tmp_path)
    assert (tmp_path / "hello").read_text() == "a file"


# -- the generated plugin, running --------------------------------------------------------------


@pytest.mark.anyio
async def test_the_generated_plugin_answers_through_the_runtime(tmp_path: Path) -> None:
    plugin = scaffold_plugin("hello", tmp_path / "plugins")
    with anyio.fail_after(30):
        config = base_config(tmp_path)
        config["plugins"] = {"hello": {"grant": ["log"]}}
        async with Runtime(config) as rt:
            p = await rt.load(plugin)
            assert await p.call("greet", {"name": "Ada"}) == "Hello Ada"
            assert await p.call("greet", {"name": "Ada", "excited": True}) == "Hello Ada!"


def test_the_generated_test_passes_when_the_author_runs_pytest(tmp_path: Path) -> None:
    plugin = scaffold_plugin("hello", tmp_path / "plugins")
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin)],
        cwd=plugin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


# -- the operator's side: a scaffold runs as made -------------------------------------------------

CORDON = str(Path(sys.executable).parent / "cordon")


def cordon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CORDON, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def test_a_new_plugin_answers_cordon_call_from_the_folder_it_was_created_in(
    tmp_path: Path,
) -> None:
    made = cordon("new", "plugin", "x", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    r = cordon("call", "x", "greet", "--params", '{"name": "Ada"}', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '"Hello Ada"'


def test_the_written_grant_is_what_lets_the_new_plugin_log(tmp_path: Path) -> None:
    call = ("call", "x", "greet", "--params", '{"name": "Ada"}', "--log-level", "info")
    granted = tmp_path / "granted"
    granted.mkdir()
    assert cordon("new", "plugin", "x", cwd=granted).returncode == 0
    r = cordon(*call, "--log-format", "json", cwd=granted)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines()]
    assert any(e["event"] == "plugin.log" and e["msg"] == "greeting" for e in events)
    # The control: cordon grants nothing by default, so without the written grant the
    # plugin's log requests are refused (its info record never reaches the host's log).
    bare = tmp_path / "bare"
    bare.mkdir()
    assert cordon("new", "plugin", "x", "--no-config", cwd=bare).returncode == 0
    assert not (bare / "cordon.toml").exists()
    r = cordon(*call, "--log-format", "json", cwd=bare)
    events = [json.loads(line) for line in r.stderr.splitlines()]
    assert not any(e["event"] == "plugin.log" for e in events), r.stderr
    assert any("log" in str(e.get("missing", "")) + str(e.get("hint", "")) for e in events)


def test_the_written_config_grants_exactly_what_the_manifest_requests(tmp_path: Path) -> None:
    from cordon.runtime import load_config

    assert cordon("new", "plugin", "x", "--dest", "plugins", cwd=tmp_path).returncode == 0
    cfg = load_config(tmp_path / "cordon.toml")
    manifest = load_manifest(tmp_path / "plugins" / "x")
    assert cfg.for_plugin("x").grant == manifest.permissions
    assert [Path(d) for d in cfg.runtime.plugin_dirs] == [tmp_path / "plugins"]
    r = cordon("call", "plugins/x", "greet", "--params", '{"name": "Ada"}', cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_an_existing_config_keeps_its_settings_and_gains_only_the_new_grant(
    tmp_path: Path,
) -> None:
    from cordon.runtime import load_config

    (tmp_path / "cordon.toml").write_text(
        '[runtime]\nstate-dir = "st"\n[plugins.other]\ngrant = []\n'
    )
    assert cordon("new", "plugin", "x", cwd=tmp_path).returncode == 0
    cfg = load_config(tmp_path / "cordon.toml")
    assert Path(cfg.runtime.state_dir) == tmp_path / "st"
    assert cfg.for_plugin("x").grant == ("log",)
    assert cfg.for_plugin("other").grant == ()


def test_a_config_that_already_configures_the_plugin_is_never_rewritten(tmp_path: Path) -> None:
    text = "[plugins.x]\ngrant = []\n"
    (tmp_path / "cordon.toml").write_text(text)
    r = cordon("new", "plugin", "x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cordon.toml").read_text() == text
    assert "[plugins.x]" in r.stderr and 'grant = ["log"]' in r.stderr
