"""A granted command never reads configuration or code a plugin could have written.

The attacker is a real plugin in a strict-sandboxed worker (tests/sandbox/hostile/
exec_planter): it plants ``~/.gitconfig``, ``~/.kube/config``, ``~/.docker/cli-plugins/``
and repo configs in its scratch dir (which used to be the command's HOME and cwd), ships
configs in its own plugin directory, and spells paths to them in arguments. Each payload
would create a marker in a directory the command is explicitly allowed to write, so a payload
that ran would leave it whatever lock-down it ran under. The controls run the same command
the old way (HOME and cwd = the plugin's scratch dir, no lock-down) and the payload runs.

Commands: the real ``git``; stand-ins for ``kubectl`` and ``docker`` (tests/fakebin) that
read their configuration the way the real ones do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import PluginHandle, Runtime
from tests.conftest import base_config

pytestmark = pytest.mark.anyio

HOSTILE = Path(__file__).resolve().parent / "hostile"
FAKEBIN = Path(__file__).resolve().parents[1] / "fakebin"
SECRET = "cordon-exec-test-secret"
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.markers = tmp_path / "markers"
        self.bin = tmp_path / "bin"
        self.repo = tmp_path / "repo"
        self.plugin_dir = tmp_path / "plugins" / "exec_planter"
        self.rt: Runtime | None = None
        self.plugin: PluginHandle | None = None
        self.scratch = Path()

    def payload(self, name: str) -> str:
        """A shell command that proves it ran."""
        return f"touch {self.markers / name}"

    def ran(self, name: str) -> bool:
        return (self.markers / name).exists()

    async def plant(self, files: dict[str, str], executable: list[str] | None = None) -> None:
        assert self.plugin is not None
        await self.plugin.call("plant", {"files": files, "executable": executable or []})

    async def run(self, argv: list[str], timeout: float | None = None) -> dict[str, Any]:
        assert self.plugin is not None
        with anyio.fail_after(30):
            result: dict[str, Any] = await self.plugin.call(
                "run", {"argv": argv, "timeout": timeout}
            )
        return result

    def old_way(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """The control: what the host used to do (HOME and cwd = scratch, no lock-down)."""
        exe = shutil.which(argv[0], path=str(self.bin) + os.pathsep + "/usr/bin:/bin")
        assert exe is not None
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.scratch)}
        return subprocess.run(
            [exe, *argv[1:]],
            cwd=self.scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    e.markers.mkdir()
    e.bin.mkdir()
    for name in ("docker", "kubectl"):
        body = (FAKEBIN / name).read_text().split("\n", 1)[1]
        (e.bin / name).write_text(f"#!{sys.executable}\n{body}")
        (e.bin / name).chmod(0o755)
    if GIT is not None:
        e.repo.mkdir()
        subprocess.run([GIT, "init", "-q", str(e.repo)], check=True, timeout=30)
    shutil.copytree(HOSTILE / "exec_planter", e.plugin_dir)
    # The host's own secret, and PATH with the stand-ins first (read when a plugin loads).
    monkeypatch.setenv("CORDON_EXEC_TEST_TOKEN", SECRET)
    monkeypatch.setenv("PATH", f"{e.bin}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    cfg = base_config(tmp_path, sandbox="strict")
    # The operator lets each command write the markers dir (and the stand-ins their call
    # logs, git the operator's repo): a payload that ran could leave its marker.
    may_write = [str(e.markers), str(e.bin)]
    cfg["plugins"] = {
        "exec_planter": {
            "grant": ["exec:git", "exec:kubectl", "exec:docker", "exec:sh", "exec:env"],
            "exec": {
                "git": {"write": [*may_write, str(e.repo)]},
                "kubectl": {"write": may_write},
                "docker": {"write": may_write},
                "sh": {"write": may_write},
            },
        }
    }
    async with Runtime(cfg) as rt:
        e.rt = rt
        with anyio.fail_after(30):
            e.plugin = await rt.load(e.plugin_dir)
            e.scratch = Path(await e.plugin.call("plant", {"files": {}}))
        yield e


def refused(result: dict[str, Any]) -> bool:
    return result.get("refused") == "PermissionDenied"


# -- dotfiles in the old HOME ---------------------------------------------------------------


@needs_git
async def test_a_planted_gitconfig_alias_never_runs(env: Env) -> None:
    await env.plant({".gitconfig": f"[alias]\n\tpwn = !{env.payload('alias')}\n"})
    result = await env.run(["git", "pwn"])
    assert result["returncode"] != 0, "no such git command: the alias was never read"
    assert not env.ran("alias")
    env.old_way(["git", "pwn"])
    assert env.ran("alias"), "control: with HOME = scratch the alias runs"


@needs_git
async def test_a_planted_gitconfig_fsmonitor_never_runs_in_the_operators_repo(env: Env) -> None:
    await env.plant({".gitconfig": f"[core]\n\tfsmonitor = {env.payload('fsmonitor')}\n"})
    result = await env.run(["git", "-C", str(env.repo), "status", "--porcelain"])
    assert result["returncode"] == 0, result
    assert not env.ran("fsmonitor")
    env.old_way(["git", "-C", str(env.repo), "status", "--porcelain"])
    assert env.ran("fsmonitor"), "control: with HOME = scratch the hook runs"


async def test_a_planted_kubeconfig_exec_credential_never_runs(env: Env) -> None:
    credential = {"command": "/bin/sh", "args": ["-c", env.payload("kube")]}
    kubeconfig = {"apiVersion": "v1", "users": [{"name": "u", "user": {"exec": credential}}]}
    await env.plant({".kube/config": json.dumps(kubeconfig)})
    result = await env.run(["kubectl", "get", "pods"])
    assert result["returncode"] == 0, result
    assert not env.ran("kube")
    env.old_way(["kubectl", "get", "pods"])
    assert env.ran("kube"), "control: with HOME = scratch the credential plugin runs"


async def test_a_planted_docker_cli_plugin_never_runs(env: Env) -> None:
    script = f"#!/bin/sh\n{env.payload('docker-plugin')}\n"
    await env.plant(
        {".docker/cli-plugins/docker-x": script}, executable=[".docker/cli-plugins/docker-x"]
    )
    result = await env.run(["docker", "--help"])
    assert result["returncode"] == 0, result
    assert not env.ran("docker-plugin")
    env.old_way(["docker", "--help"])
    assert env.ran("docker-plugin"), "control: with HOME = scratch the CLI plugin runs"


# -- the same files reached through arguments ------------------------------------------------


@needs_git
@pytest.mark.parametrize(
    "spell",
    [
        ["-C", "{scratch}/repo", "status"],
        ["--git-dir={scratch}/repo/.git", "status"],
        ["-C", "/proc/{hostpid}/root{scratch}/repo", "status"],
        ["-C", "/proc/self/cwd/../../scratch/exec_planter/repo", "status"],
        ["-C", "../../scratch/exec_planter/repo", "status"],
        ["-C", "{scratch}/link-to-repo", "status"],
    ],
)
async def test_a_repo_config_in_scratch_is_refused_however_the_argument_spells_it(
    env: Env, spell: list[str]
) -> None:
    hook = env.payload("repo")
    await env.plant(
        {
            "repo/.git/HEAD": "ref: refs/heads/main\n",
            "repo/.git/config": f"[core]\n\trepositoryformatversion = 0\n\tfsmonitor = {hook}\n",
            "repo/.git/objects/.keep": "",
            "repo/.git/refs/heads/.keep": "",
        }
    )
    (env.scratch / "link-to-repo").symlink_to(env.scratch / "repo")
    argv = ["git", *(a.format(scratch=env.scratch, hostpid=os.getpid()) for a in spell)]
    result = await env.run(argv)
    assert refused(result), result
    assert "argv[" in result["message"]
    assert not env.ran("repo")
    subprocess.run(
        [GIT or "git", "-C", str(env.scratch / "repo"), "status"],
        check=False,
        env={"HOME": str(env.markers), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
    )
    assert env.ran("repo"), "control: git run on that repo runs its fsmonitor hook"


async def test_a_kubeconfig_shipped_in_the_plugins_own_directory_is_refused(env: Env) -> None:
    evil = env.plugin_dir / "evil-kubeconfig.json"
    evil.write_text(
        json.dumps(
            {
                "users": [
                    {
                        "name": "u",
                        "user": {"exec": {"command": "/bin/sh", "args": ["-c", env.payload("k")]}},
                    }
                ]
            }
        )
    )
    for argv in (
        ["kubectl", f"--kubeconfig={evil}", "get", "pods"],
        ["kubectl", "--kubeconfig", str(evil), "get", "pods"],
        ["docker", "--config", str(env.plugin_dir), "ps"],
    ):
        result = await env.run(argv)
        assert refused(result), (argv, result)
    assert not env.ran("k")


@needs_git
async def test_code_a_git_grant_runs_by_its_arguments_still_cannot_read_the_plugins_files(
    env: Env,
) -> None:
    """`git -c alias.x=!cmd` is git's own power (an escalator, flagged by cordon doctor); the
    argument check does not parse a shell string inside a value, and the lock-down holds."""
    await env.plant({"secret.txt": "plugin-written\n"})
    assert env.rt is not None and env.rt.state_dir is not None
    state = env.rt.state_dir
    script = (
        f"!cat {env.scratch}/secret.txt; ls {env.scratch}; cat /proc/{os.getpid()}/environ; "
        f"ls {state}; cat {env.plugin_dir}/plugin.toml; echo x > {state}/planted"
    )
    result = await env.run(["git", "-c", f"alias.peek={script}", "peek"])
    assert "plugin-written" not in result["stdout"]
    assert SECRET not in result["stdout"]
    assert "storage" not in result["stdout"] and "exec_planter" not in result["stdout"]
    assert result["stderr"].count("Permission denied") >= 5, result
    assert not (state / "planted").exists()


# -- environment, directories, patterns -----------------------------------------------------


async def test_the_hosts_environment_never_reaches_the_command(env: Env) -> None:
    result = await env.run(["env"])
    names = {line.split("=", 1)[0] for line in result["stdout"].splitlines()}
    assert SECRET not in result["stdout"]
    assert names == {"PATH", "LANG", "HOME", "TMPDIR", "PWD", "GIT_CEILING_DIRECTORIES"}


async def test_each_runs_home_is_fresh_and_removed_even_after_a_timeout(env: Env) -> None:
    assert env.rt is not None and env.rt.state_dir is not None
    runs = env.rt.state_dir / "exec"
    first = await env.run(["sh", "-c", 'echo "$HOME"; ls -A "$HOME"; touch "$HOME/.x"'])
    home = Path(first["stdout"].splitlines()[0])
    assert first["stdout"].splitlines()[1:] == [], "empty"
    assert home.parent == runs and not home.is_relative_to(env.scratch)
    timed_out = await env.run(["sh", "-c", 'touch "$HOME/y"; sleep 30'], timeout=0.5)
    assert timed_out["refused"] == "ExecTimeout" or "CallTimeout" in timed_out["refused"]
    assert list(runs.iterdir()) == [], "every run's directory removed"


async def test_path_entries_inside_the_plugins_scratch_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    planted = state / "scratch" / "exec_planter" / "bin"
    planted.mkdir(parents=True)
    (planted / "git").write_text(f"#!/bin/sh\ntouch {tmp_path}/planted-ran\n")
    (planted / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{planted}:/usr/bin:/bin")
    cfg = base_config(tmp_path)
    cfg["plugins"] = {"exec_planter": {"grant": ["exec:git"]}}
    async with Runtime(cfg) as rt:
        with anyio.fail_after(30):
            plugin = await rt.load(HOSTILE / "exec_planter")
            result = await plugin.call("run", {"argv": ["git", "--version"]})
    assert not (tmp_path / "planted-ran").exists()
    if GIT is not None:
        assert result["stdout"].startswith("git version")


async def test_argument_patterns_narrow_a_grant_and_refuse_option_injection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    body = (FAKEBIN / "docker").read_text().split("\n", 1)[1]
    (bindir / "docker").write_text(f"#!{sys.executable}\n{body}")
    (bindir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    cfg = base_config(tmp_path)
    cfg["plugins"] = {
        "exec_planter": {
            "grant": ["exec:docker"],
            "exec": {"docker": {"allow": ["ps *", "ps --all"], "write": [str(bindir)]}},
        }
    }
    async with Runtime(cfg) as rt:
        with anyio.fail_after(30):
            plugin = await rt.load(HOSTILE / "exec_planter")
            ok = await plugin.call("run", {"argv": ["docker", "ps"]})
            ok_all = await plugin.call("run", {"argv": ["docker", "ps", "--all"]})
            escapes = [
                ["docker", "run", "--privileged", "-v", "/:/host", "alpine", "chroot", "/host"],
                ["docker", "ps", "--format", "{{json .}}"],
                ["docker", "ps", "--all", "--filter=x"],
                ["docker", "--config=/tmp", "ps"],
                ["docker", "ps", "--", "--all"],
            ]
            results = [await plugin.call("run", {"argv": argv}) for argv in escapes]
            trail = await rt.audit("exec_planter")
    assert ok["returncode"] == ok_all["returncode"] == 0
    for argv, result in zip(escapes, results, strict=True):
        assert refused(result), (argv, result)
        assert "'ps *'" in result["message"] and "exec:docker" in result["message"]
    calls = [
        json.loads(line)["argv"]
        for line in (bindir / "docker.calls.jsonl").read_text().splitlines()
    ]
    assert calls == [["ps"], ["ps", "--all"]], "no refused call ever ran"
    denied = [e for e in trail if e.method == "host/exec" and not e.allowed]
    assert len(denied) == len(escapes)
