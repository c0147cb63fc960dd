"""Host-side exec: bare allowlisted names, argv only, bounded in time and output."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from cordon.protocol import CallTimeout, InvalidParams
from cordon.runtime._exec import CommandNotFound, ExecPolicy, ExecTimeout, check_argv


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


@pytest.fixture
def policy(tmp_path: Path) -> ExecPolicy:
    return ExecPolicy(cwd=tmp_path, path="/usr/bin:/bin", max_output=1000, default_timeout=10)


async def test_a_command_runs_and_returns_code_and_output(policy: ExecPolicy) -> None:
    r = await policy.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr, r.truncated) == (3, "out\n", "err\n", False)


async def test_arguments_are_never_interpreted_by_a_shell(policy: ExecPolicy) -> None:
    r = await policy.run(["echo", "$HOME; ls", "`id`", "*"])
    assert r.stdout == "$HOME; ls `id` *\n"


async def test_stdin_is_empty(policy: ExecPolicy) -> None:
    r = await policy.run(["cat"], timeout=5)
    assert (r.returncode, r.stdout) == (0, "")


async def test_the_host_environment_does_not_leak_into_the_command(
    policy: ExecPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORDON_TEST_SECRET", "leak")
    r = await policy.run(["env"])
    assert "CORDON_TEST_SECRET" not in r.stdout
    assert "PATH=/usr/bin:/bin" in r.stdout


async def test_it_runs_in_the_policys_working_directory(policy: ExecPolicy, tmp_path: Path) -> None:
    assert (await policy.run(["pwd"])).stdout.strip() == str(tmp_path)


async def test_output_past_the_limit_is_truncated_and_flagged(policy: ExecPolicy) -> None:
    r = await policy.run(["sh", "-c", "head -c 100000 /dev/zero; echo done >&2"])
    assert r.truncated
    assert len(r.stdout) == 1000
    assert r.stderr == "done\n", "the command was not blocked by the full pipe"


async def test_a_command_past_its_timeout_is_killed_with_its_whole_group(
    policy: ExecPolicy, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(ExecTimeout) as err:
        await policy.run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert isinstance(err.value, CallTimeout), "arrives typed on the worker side"
    assert err.value.fields()["method"] == "exec:sh"
    grandchild = int(pidfile.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"


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
    "argv0", ["/bin/sh", "./sh", "../sh", "..", ".", "bin/sh", "sh -c", "", "-rf", "a\x00b"]
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


async def test_a_command_is_resolved_only_on_the_policys_path(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "mytool"
    tool.write_text("#!/bin/sh\necho mine\n")
    tool.chmod(0o755)
    assert (await ExecPolicy(path=str(bindir), cwd=tmp_path).run(["mytool"])).stdout == "mine\n"
    with pytest.raises(CommandNotFound):
        await ExecPolicy(path="/usr/bin:/bin", cwd=tmp_path).run(["mytool"])
