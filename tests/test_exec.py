"""Host-side exec: bare allowlisted names, argv only, bounded in time and output; a fresh
host-owned directory per run, an allowlisted environment, arguments and the command's own
file access kept out of every plugin-writable tree."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from cordon.protocol import CallTimeout, InvalidParams, PermissionDenied
from cordon.runtime import PluginHandle, Runtime
from cordon.runtime._hostapi._exec import (
    MAX_INPUT,
    CommandNotFound,
    ExecConfigError,
    ExecPolicy,
    ExecRule,
    ExecTimeout,
    check_argv,
)
from cordon.runtime._hostapi._exec_landlock import LandlockUnavailable, abi_version
from cordon.runtime._settings._exec_rules import matches_any
from tests.conftest import base_config


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


def _landlock() -> bool:
    try:
        abi_version()
    except LandlockUnavailable:
        return False
    return True


needs_landlock = pytest.mark.skipif(not _landlock(), reason="no Landlock on this kernel")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    d = tmp_path / "scratch"
    d.mkdir()
    (d / "secret.txt").write_text("plugin-written\n")
    return d


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def policy(scratch: Path, runs: Path) -> ExecPolicy:
    return ExecPolicy(
        scratch=scratch,
        run_base=runs,
        path="/usr/bin:/bin",
        max_output=1000,
        default_timeout=10,
        lockdown="auto",
    )


def _policy(scratch: Path, runs: Path, **kw: object) -> ExecPolicy:
    return ExecPolicy(scratch=scratch, run_base=runs, path="/usr/bin:/bin", **kw)  # type: ignore[arg-type]


async def test_a_command_runs_and_returns_code_and_output(policy: ExecPolicy) -> None:
    r = await policy.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr, r.truncated) == (3, "out\n", "err\n", False)


async def test_arguments_are_never_interpreted_by_a_shell(policy: ExecPolicy) -> None:
    r = await policy.run(["echo", "$HOME; ls", "`id`", "*"])
    assert r.stdout == "$HOME; ls `id` *\n"


async def test_stdin_is_empty(policy: ExecPolicy) -> None:
    r = await policy.run(["cat"], timeout=5)
    assert (r.returncode, r.stdout) == (0, "")


async def test_the_environment_is_the_allowlist_and_nothing_from_the_host(
    policy: ExecPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORDON_TEST_SECRET", "leak")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/somewhere")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/somewhere/gitconfig")
    r = await policy.run(["sh", "-c", "env; pwd"])
    *lines, cwd = r.stdout.splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert "leak" not in r.stdout
    # sh adds PWD (and SHLVL/_ on some shells) itself; everything else is ours.
    allowed = {"PATH", "LANG", "HOME", "TMPDIR", "GIT_CEILING_DIRECTORIES"}
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == allowed
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] == env["TMPDIR"] == cwd


async def test_each_run_gets_a_fresh_empty_private_directory_removed_afterwards(
    policy: ExecPolicy, runs: Path, scratch: Path
) -> None:
    probe = "pwd; ls -A; stat -c %a .; touch left-behind; mkdir -p d/e; chmod 000 d"
    first = (await policy.run(["sh", "-c", probe])).stdout.splitlines()
    second = (await policy.run(["sh", "-c", probe])).stdout.splitlines()
    assert first[0] != second[0], "a new directory per run"
    for lines in (first, second):
        cwd, mode = Path(lines[0]), lines[-1]
        assert lines[1:-1] == [], "empty: nothing from an earlier run, nothing of the plugin's"
        assert mode == "700"
        assert cwd.parent == runs.resolve()
        assert not cwd.exists(), "removed after the run, even with a mode-000 subdirectory"
        assert not cwd.is_relative_to(scratch)
    assert list(runs.iterdir()) == []


async def test_the_run_directory_is_removed_after_a_timeout_too(
    policy: ExecPolicy, runs: Path
) -> None:
    with pytest.raises(ExecTimeout):
        await policy.run(["sh", "-c", "touch here; sleep 30"], timeout=0.5)
    assert list(runs.iterdir()) == []


async def test_the_run_directory_is_removed_when_the_call_is_cancelled(
    policy: ExecPolicy, runs: Path
) -> None:
    with anyio.move_on_after(0.5):
        await policy.run(["sh", "-c", "touch here; sleep 30"], timeout=20)
    assert list(runs.iterdir()) == []


def test_a_run_base_inside_a_plugin_writable_tree_is_refused(scratch: Path) -> None:
    with pytest.raises(ExecConfigError, match="plugin-writable"):
        ExecPolicy(scratch=scratch, run_base=scratch / "runs")


async def test_output_past_the_limit_is_truncated_and_flagged(policy: ExecPolicy) -> None:
    r = await policy.run(["sh", "-c", "head -c 100000 /dev/zero; echo done >&2"])
    assert r.truncated
    assert len(r.stdout) == 1000
    assert r.stderr == "done\n", "the command was not blocked by the full pipe"


async def test_a_command_past_its_timeout_is_killed_with_its_whole_group(
    scratch: Path, runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    policy = _policy(scratch, runs, rules={"sh": ExecRule(write=(str(out),))})
    pidfile = out / "child.pid"
    started = time.monotonic()
    with pytest.raises(ExecTimeout) as err:
        await policy.run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert isinstance(err.value, CallTimeout), "arrives typed on the worker side"
    assert err.value.fields()["method"] == "exec:sh"
    grandchild = int(pidfile.read_text())
    # SIGKILL is sent by the time run() returns; its delivery is the kernel's to finish.
    _gone, alive = psutil.wait_procs(_procs(grandchild), timeout=5)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


def _procs(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []


async def test_a_daemonised_grandchild_holding_the_pipes_does_not_hold_the_call(
    policy: ExecPolicy,
) -> None:
    started = time.monotonic()
    r = await policy.run(["sh", "-c", "sleep 30 & echo bye"], timeout=10)
    assert r.stdout == "bye\n"
    assert time.monotonic() - started < 5


async def test_a_missing_command_is_a_typed_error(policy: ExecPolicy) -> None:
    with pytest.raises(CommandNotFound) as err:
        await policy.run(["no-such-command-cordon"], plugin="p1")
    assert err.value.fields() == {"command": "no-such-command-cordon", "plugin": "p1"}


@pytest.mark.parametrize(
    "argv0",
    ["/bin/sh", "./sh", "../sh", "..", ".", "bin/sh", "sh -c", "", "-rf", "a\x00b", "sh\n"],
)
def test_argv0_must_be_a_bare_command_name(argv0: str) -> None:
    with pytest.raises(InvalidParams) as err:
        check_argv([argv0, "x"])
    assert err.value.fields()["field"] == "argv[0]"


@pytest.mark.parametrize(("argv", "field"), [([], "argv"), ("ls", "argv"), (["ls", 3], "argv[1]")])
def test_argv_must_be_a_list_of_strings(argv: object, field: str) -> None:
    with pytest.raises(InvalidParams) as err:
        check_argv(argv)
    assert err.value.fields()["field"] == field


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), 61])
async def test_timeouts_outside_the_policy_are_invalid(policy: ExecPolicy, timeout: float) -> None:
    with pytest.raises(InvalidParams):
        await policy.run(["true"], timeout=timeout)


async def test_a_command_is_resolved_only_on_the_policys_path(tmp_path: Path, runs: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "mytool"
    tool.write_text("#!/bin/sh\necho mine\n")
    tool.chmod(0o755)
    assert (await ExecPolicy(path=str(bindir), run_base=runs).run(["mytool"])).stdout == "mine\n"
    with pytest.raises(CommandNotFound):
        await ExecPolicy(path="/usr/bin:/bin", run_base=runs).run(["mytool"])


async def test_path_entries_inside_plugin_writable_trees_are_dropped(
    scratch: Path, tmp_path: Path, runs: Path
) -> None:
    planted = scratch / "bin"
    planted.mkdir()
    (planted / "true").write_text("#!/bin/sh\necho planted\n")
    (planted / "true").chmod(0o755)
    link = tmp_path / "innocent"
    link.symlink_to(planted)
    path = f"{planted}:{link}:relative/bin::/usr/bin:/bin"
    policy = ExecPolicy(scratch=scratch, run_base=runs, path=path)
    assert policy.path == "/usr/bin:/bin"
    r = await policy.run(["true"])
    assert (r.returncode, r.stdout) == (0, "")


@pytest.mark.parametrize(
    "arg",
    [
        "{scratch}/secret.txt",
        "--kubeconfig={scratch}/secret.txt",
        "--config={scratch}",
        "@{scratch}/secret.txt",
        "{scratch}/../scratch/./secret.txt",
        "{link}/secret.txt",
        "../../scratch/secret.txt",
        "/proc/self/cwd",
        "/proc/1/root/etc/passwd",
        "--upload-pack=/proc/self/root/bin/sh",
        "{runs}/cordon-exec-other/config",
    ],
)
async def test_arguments_that_reach_a_plugin_writable_tree_or_proc_are_refused(
    scratch: Path, tmp_path: Path, arg: str
) -> None:
    runs = tmp_path / "runs"
    link = tmp_path / "alias"
    link.symlink_to(scratch)
    # run_base next to scratch, so "../../scratch" from a run dir lands in it.
    policy = ExecPolicy(scratch=scratch, run_base=runs, path="/usr/bin:/bin")
    text = arg.format(scratch=scratch, link=link, runs=runs)
    with pytest.raises(PermissionDenied) as err:
        await policy.run(["cat", text], plugin="p1")
    assert err.value.permission == "exec:cat"
    assert "argv[1]" in (err.value.message or "")


async def test_relative_arguments_inside_the_runs_own_directory_are_fine(
    policy: ExecPolicy,
) -> None:
    r = await policy.run(["ls", "-a", ".", "./sub/..", "--color=never"])
    assert r.returncode == 2, "ran (and found no ./sub): not refused"
    assert r.stdout.split() == [".:", ".", ".."]


@needs_landlock
async def test_the_lockdown_stops_the_command_reading_plugin_files_however_spelled(
    scratch: Path, runs: Path
) -> None:
    """The argument check cannot see a path inside a shell string; the kernel can."""
    policy = _policy(scratch, runs, lockdown="require")
    script = f'cat "{scratch}/secret.txt"; ls "{scratch}"; cat /proc/$PPID/cwd/x'
    r = await policy.run(["sh", "-c", script])
    assert "plugin-written" not in r.stdout
    assert r.stderr.count("Permission denied") >= 2, r.stderr


async def test_control_without_the_lockdown_the_same_command_reads_the_plugins_file(
    scratch: Path, runs: Path
) -> None:
    policy = _policy(scratch, runs, lockdown="off")
    r = await policy.run(["sh", "-c", f'cat "{scratch}/secret.txt"'])
    assert r.stdout == "plugin-written\n"


@needs_landlock
async def test_the_locked_down_command_writes_only_its_run_directory_and_operator_paths(
    scratch: Path, runs: Path, tmp_path: Path
) -> None:
    allowed = tmp_path / "repo"
    allowed.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    policy = _policy(
        scratch, runs, lockdown="require", rules={"sh": ExecRule(write=(str(allowed),))}
    )
    script = (
        f"echo a > here; echo b > {allowed}/ok; echo c > {elsewhere}/no; "
        f"echo d > {scratch}/planted; echo e > /dev/null; cat here"
    )
    r = await policy.run(["sh", "-c", script])
    assert r.stdout == "a\n"
    assert (allowed / "ok").read_text() == "b\n"
    assert not (elsewhere / "no").exists()
    assert not (scratch / "planted").exists()


def test_operator_write_paths_inside_plugin_writable_trees_are_refused(
    scratch: Path, runs: Path
) -> None:
    with pytest.raises(ExecConfigError, match=r"exec\.git\.write\[0\]"):
        ExecPolicy(scratch=scratch, run_base=runs, rules={"git": ExecRule(write=(str(scratch),))})


# -- argument patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "ok"),
    [
        (["echo", "ps"], True),
        (["echo", "ps", "web", "db"], True),
        (["echo", "ps", "--format", "{{.ID}}"], False),
        (["echo", "ps", "web", "-a"], False),
        (["echo", "ps", "+x"], False),
        (["echo", "ps", "@file"], False),
        (["echo", "ps", "--", "--format"], False),
        (["echo", "ps", "--all"], True),
        (["echo", "ps", "--all", "web"], True),
        (["echo", "logs", "--tail=100", "web"], True),
        (["echo", "logs", "--tail=100", "--follow"], False),
        (["echo", "logs", "--since=1h", "web"], False),
        (["echo", "rm", "--", "-weird-name"], True),
        (["echo", "rm", "-weird-name"], False),
        (["echo", "version"], True),
        (["echo", "version", "x"], False),
        (["echo"], True),
        (["echo", "build", "."], False),
        (["echo", "run", "--privileged", "alpine"], False),
    ],
)
async def test_argument_patterns_allow_only_what_they_spell(
    scratch: Path, runs: Path, argv: list[str], ok: bool
) -> None:
    rule = ExecRule(allow=("ps *", "ps --all *", "logs --tail=* *", "rm -- *", "version", ""))
    policy = _policy(scratch, runs, rules={"echo": rule})
    if ok:
        assert (await policy.run(argv)).returncode == 0
    else:
        with pytest.raises(PermissionDenied) as err:
            await policy.run(argv, plugin="p1")
        message = err.value.message or ""
        assert "exec:echo" in message and "'ps *'" in message, message


async def test_an_empty_allow_list_refuses_every_call(scratch: Path, runs: Path) -> None:
    policy = _policy(scratch, runs, rules={"echo": ExecRule(allow=())})
    with pytest.raises(PermissionDenied):
        await policy.run(["echo"])


async def test_without_an_allow_list_any_arguments_pass(scratch: Path, runs: Path) -> None:
    policy = _policy(scratch, runs, rules={"echo": ExecRule()})
    assert (await policy.run(["echo", "--anything", "goes"])).stdout == "--anything goes\n"


async def test_operator_env_reaches_the_command_but_cannot_move_home(
    scratch: Path, runs: Path
) -> None:
    rule = ExecRule(env={"DOCKER_HOST": "unix:///run/x.sock", "PATH": f"{scratch}:/bin"})
    policy = _policy(scratch, runs, rules={"sh": rule})
    r = await policy.run(["sh", "-c", 'echo "$DOCKER_HOST|$PATH|$HOME"; pwd'])
    line, cwd = r.stdout.splitlines()
    assert line == f"unix:///run/x.sock|/bin|{cwd}", "PATH filtered, HOME the run's own"


@pytest.mark.parametrize("write", ["/", "{tmp}", "{scratch}/sub", "{private}"])
def test_operator_write_paths_overlapping_a_private_tree_either_way_are_refused(
    scratch: Path, runs: Path, tmp_path: Path, write: str
) -> None:
    private = tmp_path / "state"
    path = write.format(tmp=tmp_path, scratch=scratch, private=private)
    with pytest.raises(ExecConfigError) as err:
        ExecPolicy(
            scratch=scratch,
            deny=[private],
            run_base=runs,
            rules={"git": ExecRule(write=(path,))},
        )
    assert err.value.field == "exec.git.write[0]"


async def test_dotdot_after_a_symlink_is_taken_from_the_links_target(
    scratch: Path, runs: Path, tmp_path: Path
) -> None:
    """``/alias/../x`` is the parent of the link's *target* for the kernel, not ``/x``."""
    (scratch / "sub").mkdir()
    alias = tmp_path / "outside" / "alias"
    alias.parent.mkdir()
    alias.symlink_to(scratch / "sub")
    policy = _policy(scratch, runs, lockdown="off")
    with pytest.raises(PermissionDenied, match=r"argv\[1\]"):
        await policy.run(["cat", f"{alias}/../secret.txt"])


@pytest.mark.parametrize(
    "argv",
    [
        ["echo", *(["/usr" + "/bin/.." * 20] * 255)],
        ["echo", "x" + "=" * 100_000],
    ],
    ids=["many-existing-components", "many-equals"],
)
async def test_arguments_that_would_cost_the_host_unbounded_lookups_are_refused(
    policy: ExecPolicy, argv: list[str]
) -> None:
    with pytest.raises(PermissionDenied, match="more path components"):
        await policy.run(argv)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
async def test_git_in_a_run_finds_no_repository_above_its_run_directory(
    scratch: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "host-repo"
    runs = repo / "state" / "exec"
    runs.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
    policy = _policy(scratch, runs)
    r = await policy.run(["git", "rev-parse", "--show-toplevel"])
    assert r.returncode != 0 and "not a git repository" in r.stderr
    control = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=runs,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert control.stdout.strip() == str(repo), "control: without the ceiling git finds it"


@pytest.mark.parametrize(
    ("args", "ok"),
    [
        (["run", "--", "busybox"], True),
        (["run", "--detach", "--name=web", "--env=A=1", "--env=B=--x", "--", "nginx"], True),
        (["run", "--env=A=1", "--env=B=2", "--env=C=3", "--", "nginx", "sh"], True),
        (["run", "--name=web", "--detach", "--", "nginx"], False),  # order is the pattern's
        (["run", "--privileged", "--", "nginx"], False),
        (["run", "--env=A=1", "-v", "/:/host", "--", "nginx"], False),
        (["run", "nginx"], False),
        (["run", "--", "--privileged"], True),  # after --, an operand (the image name)
    ],
)
def test_a_repeated_token_matches_its_glob_zero_or_more_times_in_a_row(
    args: list[str], ok: bool
) -> None:
    pattern = "run --detach... --name=*... --env=*... -- *"
    assert matches_any([pattern], args) is ok


def test_repeats_cannot_make_matching_blow_up() -> None:
    pattern = " ".join(["-*..."] * 32 + ["x"])
    assert matches_any([pattern], ["-a"] * 255) is False


def _can_mount(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    ok = subprocess.run(["mount", "--bind", str(a), str(b)], capture_output=True, check=False)
    if ok.returncode == 0:
        subprocess.run(["umount", str(b)], check=True)
    return ok.returncode == 0


async def test_removing_a_run_dir_never_deletes_through_a_mount_the_command_left(
    scratch: Path, runs: Path, tmp_path: Path
) -> None:
    if shutil.which("mount") is None or not _can_mount(tmp_path):
        pytest.skip("cannot bind-mount here")
    victim = tmp_path / "host-files"
    victim.mkdir()
    (victim / "precious").write_text("keep me\n")
    policy = _policy(scratch, runs, lockdown="off")
    script = f'mkdir x && mount --bind "{victim}" x && pwd'
    r = await policy.run(["sh", "-c", script])
    run_dir = Path(r.stdout.strip())
    try:
        assert (victim / "precious").read_text() == "keep me\n"
        assert run_dir.is_dir(), "kept, with its mount, rather than emptied through it"
    finally:
        subprocess.run(["umount", str(run_dir / "x")], check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


@needs_landlock
async def test_the_locked_down_command_cannot_mount(
    scratch: Path, runs: Path, tmp_path: Path
) -> None:
    if shutil.which("mount") is None or not _can_mount(tmp_path):
        pytest.skip("cannot bind-mount here (the control would not run)")
    victim = tmp_path / "host-files"
    victim.mkdir()
    policy = _policy(scratch, runs, lockdown="require")
    r = await policy.run(["sh", "-c", f'mkdir x && mount --bind "{victim}" x; echo "rc=$?"'])
    assert "rc=0" not in r.stdout, r
    assert list(runs.iterdir()) == []


# -- stdin: ctx.exec(argv, input=...) ----------------------------------------------------------

#: tr feeds its output back while it reads: a host that wrote all input before reading any
#: output would block on a full stdout pipe while tr blocks on a full stdin.
_INPUT_RULES = {
    "tr": ExecRule(allow=("a-z A-Z",), input=True),
    "wc": ExecRule(allow=("-c",), input=True),
    "true": ExecRule(allow=("",), input=True),
    "sort": ExecRule(allow=("",)),
}


async def test_input_reaches_the_commands_stdin_as_text_or_bytes(scratch: Path, runs: Path) -> None:
    policy = _policy(scratch, runs, rules=_INPUT_RULES)
    r = await policy.run(["tr", "a-z", "A-Z"], input="héllo --privileged $(id)\n")
    assert (r.returncode, r.stdout) == (0, "HéLLO --PRIVILEGED $(ID)\n")
    binary = bytes(range(256)) * 3
    r = await policy.run(["wc", "-c"], input=binary)
    assert r.stdout.strip() == str(len(binary))


async def test_input_over_the_limit_is_invalid_params_naming_input(
    scratch: Path, runs: Path
) -> None:
    policy = _policy(scratch, runs, rules=_INPUT_RULES)
    for big in ("x" * (MAX_INPUT + 1), b"x" * (MAX_INPUT + 1), "é" * (MAX_INPUT // 2 + 1)):
        with pytest.raises(InvalidParams) as err:
            await policy.run(["wc", "-c"], input=big)
        assert err.value.fields()["field"] == "input"
    r = await policy.run(["wc", "-c"], input=b"x" * MAX_INPUT)
    assert r.stdout.strip() == str(MAX_INPUT), "the limit itself is allowed"


@pytest.mark.parametrize(
    "rules",
    [
        {},  # exec granted, no table at all
        {"sort": ExecRule(allow=("",))},  # narrowed, but input not allowed
        {"sort": ExecRule(input=True)},  # input without allow (config refuses; code too)
    ],
)
async def test_input_is_refused_unless_the_operator_allows_it_with_patterns(
    scratch: Path, runs: Path, rules: dict[str, ExecRule]
) -> None:
    policy = _policy(scratch, runs, rules=rules)
    with pytest.raises(PermissionDenied) as err:
        await policy.run(["sort"], input="b\na\n")
    assert "exec:sort" in str(err.value) and "input" in str(err.value)
    assert (await policy.run(["sort"])).returncode == 0, "without input the grant still works"


async def test_a_command_that_never_reads_its_input_finishes_without_deadlock(
    scratch: Path, runs: Path
) -> None:
    policy = _policy(scratch, runs, rules=_INPUT_RULES)
    started = time.monotonic()
    with anyio.fail_after(20):
        r = await policy.run(["true"], input=b"\n" * MAX_INPUT, timeout=15)
    assert r.returncode == 0
    assert time.monotonic() - started < 5, "not held until the timeout"


async def test_input_is_written_while_output_is_read(scratch: Path, runs: Path) -> None:
    policy = _policy(scratch, runs, rules=_INPUT_RULES, max_output=2 * MAX_INPUT)
    with anyio.fail_after(20):
        r = await policy.run(["tr", "a-z", "A-Z"], input="ab" * (MAX_INPUT // 2), timeout=15)
    assert (r.returncode, r.truncated) == (0, False)
    assert r.stdout == "AB" * (MAX_INPUT // 2)


async def test_a_command_given_input_is_still_killed_at_its_timeout(
    scratch: Path, runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pidfile = out / "child.pid"
    rule = ExecRule(allow=("-c *",), input=True, write=(str(out),))
    policy = _policy(scratch, runs, rules={"sh": rule})
    started = time.monotonic()
    with pytest.raises(ExecTimeout):
        # Never reads stdin: the feed is blocked on a full pipe when the deadline comes.
        await policy.run(
            ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; sleep 30"],
            input=b"x" * MAX_INPUT,
            timeout=0.5,
        )
    assert time.monotonic() - started < 5
    _gone, alive = psutil.wait_procs(_procs(int(pidfile.read_text())), timeout=5)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


# -- stdin through a real worker: ctx.exec(argv, input=...) in a strict sandbox ---------------

_FEEDER = """
from typing import Any

import msgspec

from cordon.worker import Context, Plugin

plugin = Plugin()


@plugin.tool
async def run(
    ctx: Context,
    argv: list[str],
    text: str | None = None,
    hex: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    data = bytes.fromhex(hex) if hex is not None else text
    try:
        result = await ctx.exec(argv, input=data, timeout=timeout)
    except Exception as exc:
        fields = exc.fields() if hasattr(exc, "fields") else {}
        return {"error": type(exc).__name__, "message": str(exc), "field": fields.get("field")}
    return msgspec.structs.asdict(result)
"""


@contextlib.asynccontextmanager
async def _feeder(tmp_path: Path) -> AsyncIterator[PluginHandle]:
    plugin_dir = tmp_path / "plugins" / "feeder"
    plugin_dir.mkdir(parents=True)
    perms = ["exec:tr", "exec:wc", "exec:true", "exec:sort", "exec:sh"]
    (plugin_dir / "plugin.toml").write_text(
        '[plugin]\nid = "feeder"\nname = "Feeder"\nversion = "1.0.0"\n'
        f'entry = "feeder:plugin"\npermissions = {json.dumps(perms)}\n'
    )
    (plugin_dir / "feeder.py").write_text(_FEEDER)
    (tmp_path / "out").mkdir()
    exec_tables = {
        command: {"allow": list(rule.allow or ()), "input": rule.input}
        for command, rule in _INPUT_RULES.items()
    }
    exec_tables["sh"] = {"allow": ["-c *"], "input": True, "write": [str(tmp_path / "out")]}
    cfg = base_config(tmp_path, sandbox="strict")
    cfg["plugins"] = {"feeder": {"grant": perms, "exec": exec_tables}}
    async with Runtime(cfg) as rt:
        yield await rt.load(plugin_dir)


@pytest.fixture
async def feeder(tmp_path: Path) -> AsyncIterator[PluginHandle]:
    async with _feeder(tmp_path) as plugin:
        yield plugin


async def _feed(plugin: PluginHandle, argv: list[str], **params: object) -> dict[str, Any]:
    with anyio.fail_after(30):
        result: dict[str, Any] = await plugin.call("run", {"argv": argv, **params})
    return result


@needs_landlock
async def test_a_sandboxed_plugin_feeds_a_commands_stdin(feeder: PluginHandle) -> None:
    r = await _feed(feeder, ["tr", "a-z", "A-Z"], text="apiVersion: v1\nkind: Pod\n")
    assert (r["returncode"], r["stdout"]) == (0, "APIVERSION: V1\nKIND: POD\n")
    r = await _feed(feeder, ["wc", "-c"], hex=(b"\x00\xff" * 1000).hex())
    assert r["stdout"].strip() == "2000", "bytes arrive as bytes (base64 on the wire)"


@needs_landlock
async def test_a_sandboxed_plugins_oversize_or_unallowed_input_is_refused(
    feeder: PluginHandle,
) -> None:
    r = await _feed(feeder, ["wc", "-c"], hex=(b"x" * (MAX_INPUT + 1)).hex())
    assert (r["error"], r["field"]) == ("InvalidParams", "input")
    r = await _feed(feeder, ["wc", "-c"], text="x" * (MAX_INPUT + 1))
    assert (r["error"], r["field"]) == ("InvalidParams", "input")
    r = await _feed(feeder, ["sort"], text="b\na\n")
    assert r["error"] == "PermissionDenied" and "exec:sort" in r["message"]
    assert "input" in r["message"]
    assert (await _feed(feeder, ["sort"]))["returncode"] == 0


@needs_landlock
async def test_a_sandboxed_plugins_input_neither_deadlocks_nor_outlives_the_timeout(
    feeder: PluginHandle, tmp_path: Path
) -> None:
    started = time.monotonic()
    r = await _feed(feeder, ["true"], hex=(b"\n" * MAX_INPUT).hex(), timeout=20)
    assert r["returncode"] == 0 and time.monotonic() - started < 10
    pidfile = tmp_path / "out" / "child.pid"
    started = time.monotonic()
    r = await _feed(
        feeder,
        ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; sleep 30"],
        text="x" * MAX_INPUT,
        timeout=0.5,
    )
    assert r["error"] in ("CallTimeout", "ExecTimeout") and "timed out" in r["message"]
    assert time.monotonic() - started < 10
    _gone, alive = psutil.wait_procs(_procs(int(pidfile.read_text())), timeout=5)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


@needs_landlock
async def test_the_audit_trail_records_the_inputs_size_never_its_content(tmp_path: Path) -> None:
    secret = "password: hunter2-cordon\n"
    async with _feeder(tmp_path) as plugin:
        r = await _feed(plugin, ["tr", "a-z", "A-Z"], text=secret)
        assert r["stdout"] == secret.upper()
    toml = tmp_path / "cordon.toml"
    toml.write_text(f'[runtime]\nstate-dir = "{tmp_path / "state"}"\n')
    cordon = str(Path(sys.executable).parent / "cordon")
    audit = subprocess.run(
        [cordon, "audit", "feeder", "--json", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert audit.returncode == 0, audit.stderr
    (entry,) = [e for e in json.loads(audit.stdout) if e["method"] == "host/exec"]
    assert entry["allowed"] and f"<stdin: {len(secret.encode())} bytes>" in entry["summary"]
    assert "hunter2" not in audit.stdout


async def test_input_of_another_type_is_refused_in_the_worker_before_any_request() -> None:
    from cordon.worker._hostapi import exec_command

    sent: list[object] = []

    async def request(method: str, params: object) -> object:
        sent.append(params)
        return {"returncode": 0, "stdout": "", "stderr": "", "truncated": False}

    with pytest.raises(InvalidParams) as err:
        await exec_command(request, ["wc", "-c"], input=42)  # type: ignore[arg-type]
    assert err.value.fields()["field"] == "input" and sent == []
    await exec_command(request, ["wc", "-c"], input=b"\xff")
    assert sent == [
        {"argv": ["wc", "-c"], "timeout": None, "input": "/w==", "input_encoding": "base64"}
    ]
