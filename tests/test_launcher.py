"""Starting and reaping workers, for both launchers: reaped through a pidfd (exact status, no
host thread per worker), signals that can only reach the worker, grown pipes, and the choice
of launcher (``[runtime] launcher``, ``$CORDON_LAUNCHER``, what the kernel allows)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.protocol import PROTOCOL_VERSION, InitializeParams, SandboxPolicy
from cordon.runtime import ConfigError, Runtime, WorkerCrashed
from cordon.runtime._settings._config import parse_config
from cordon.runtime._supervise import _launcher
from cordon.runtime._supervise._launcher import (
    LAUNCHER_ENV,
    PIPE_SIZE_MAX,
    SpawnLauncher,
    choose_launcher,
    zygote_unsupported,
)
from cordon.runtime._supervise._worker import WorkerProcess
from cordon.runtime._supervise._zygote import ZygoteLauncher
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

PROBE = TEST_PLUGINS / "probe"
CRASHY = EXAMPLES / "crashy"
LAUNCHERS = ["spawn", "zygote"]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _probe_params(tmp_path: Path, plugin_id: str) -> InitializeParams:
    scratch = tmp_path / plugin_id
    scratch.mkdir()
    return InitializeParams(
        protocol=PROTOCOL_VERSION,
        plugin_id=plugin_id,
        plugin_dir=str(PROBE),
        entry="probe_plugin:plugin",
        scratch_dir=str(scratch),
        sandbox=SandboxPolicy(mode="best-effort"),
    )


def _config(tmp_path: Path, launcher: str | None, **defaults: Any) -> dict[str, Any]:
    config = base_config(tmp_path, **defaults)
    if launcher is not None:
        config["runtime"] = {**config["runtime"], "launcher": launcher}  # type: ignore[dict-item]
    return config


@pytest.fixture(params=LAUNCHERS)
async def launcher(request: pytest.FixtureRequest) -> Any:
    if request.param == "zygote":
        if zygote_unsupported() is not None:
            pytest.skip(str(zygote_unsupported()))
        zygote = ZygoteLauncher()
        yield zygote
        await zygote.aclose()
    else:
        yield SpawnLauncher()


async def test_running_workers_costs_the_host_no_thread_per_worker(
    tmp_path: Path, launcher: Any
) -> None:
    """asyncio's child watcher kept a waitpid thread per child; a pidfd on the loop keeps
    none. Six workers running, then all reaped: the host's thread count never moved."""
    workers = [
        WorkerProcess(plugin_id=f"p{i}", params=_probe_params(tmp_path, f"p{i}")) for i in range(6)
    ]
    if isinstance(launcher, ZygoteLauncher):
        # The zygote's own start is not a worker's: counted before.
        warm = WorkerProcess(plugin_id="warm", params=_probe_params(tmp_path, "warm"))
        workers.insert(0, warm)
    before: int | None = None
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i, worker in enumerate(workers):
                worker.launcher = launcher
                await tg.start(worker.run)
                if i == 0:
                    before = _threads()
            assert all(w.launched_by == launcher.name for w in workers)
            assert _threads() == before
            for worker in workers:
                await worker.stop()
    assert _threads() == before
    assert all(w.exit is not None and w.exit.returncode == 0 for w in workers)


async def test_the_reaped_status_is_exact_a_signal_or_the_workers_own_exit_code(
    tmp_path: Path, launcher: Any
) -> None:
    killed = WorkerProcess(plugin_id="killed", params=_probe_params(tmp_path, "killed"))
    exits_params = _probe_params(tmp_path, "crashy")
    exits_params.plugin_dir = str(CRASHY)
    exits_params.entry = "crashy_plugin:plugin"
    exits = WorkerProcess(plugin_id="crashy", params=exits_params)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            killed.launcher = exits.launcher = launcher
            await tg.start(killed.run)
            assert killed.pid is not None
            os.kill(killed.pid, signal.SIGUSR1)  # not one the host sends itself
            await tg.start(exits.run)
            with pytest.raises(WorkerCrashed):
                await exits.invoke("exit_now", {"code": 42}, timeout=30)
            await killed.exited.wait()
    assert killed.exit is not None and killed.exit.returncode == -signal.SIGUSR1
    assert killed.exit.signal == signal.SIGUSR1
    assert exits.exit is not None and exits.exit.returncode == 42


async def test_a_kill_sent_after_the_reap_reaches_no_process_that_reused_the_pid(
    tmp_path: Path, launcher: Any
) -> None:
    """Once reaped, the worker's signals go nowhere: the pid may be someone else's by now."""
    worker = WorkerProcess(plugin_id="w", params=_probe_params(tmp_path, "w"))
    worker.launcher = launcher
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await worker.stop()
    assert worker.process is not None and worker.process.returncode is not None
    assert worker.process.pidfd == -1  # closed with the worker, after the reap
    worker.kill_nowait("late")  # no error, no signal
    worker.process.kill()


async def test_the_workers_channel_pipes_are_grown_to_the_system_maximum_where_no_quota_binds(
    tmp_path: Path, launcher: Any
) -> None:
    worker = WorkerProcess(plugin_id="w", params=_probe_params(tmp_path, "w"))
    worker.launcher = launcher
    with open("/proc/sys/fs/pipe-max-size") as f:
        expected = min(PIPE_SIZE_MAX, int(f.read()))
    if _launcher._quota_binds():
        expected = 65536  # left alone: see PIPE_SIZE_MAX
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            sizes = [fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in (worker._wfd, worker._rfd)]
            await worker.stop()
    assert sizes == [expected, expected]


async def test_a_worker_command_that_cannot_start_is_an_internal_error_leaving_no_fd(
    tmp_path: Path, launcher: Any
) -> None:
    worker = WorkerProcess(
        plugin_id="w", params=_probe_params(tmp_path, "w"), python=str(tmp_path / "nope")
    )
    worker.launcher = launcher
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            with pytest.raises(Exception, match="cannot start worker for 'w'"):
                await tg.start(worker.run)


@pytest.mark.parametrize("name", LAUNCHERS)
async def test_each_worker_says_which_launcher_started_it_in_stats(
    tmp_path: Path, name: str
) -> None:
    if name == "zygote" and zygote_unsupported() is not None:
        pytest.skip(str(zygote_unsupported()))
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path, name)) as rt:
            probe = await rt.load(PROBE)
            assert rt.stats()["probe"].launcher is None  # nothing runs yet
            await probe.call("pid")
            assert rt.stats()["probe"].launcher == name
            assert rt.launcher is not None and rt.launcher.name == name


def test_an_explicit_launcher_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAUNCHER_ENV, "zygote")
    assert choose_launcher("spawn") == ("spawn", "[runtime] launcher")


def test_the_environment_replaces_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAUNCHER_ENV, "spawn")
    assert choose_launcher(None) == ("spawn", "$CORDON_LAUNCHER")
    monkeypatch.delenv(LAUNCHER_ENV)
    expected = "zygote" if zygote_unsupported() is None else "spawn"
    assert choose_launcher(None)[0] == expected


def test_a_zygote_the_kernel_cannot_run_falls_back_to_spawn_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_launcher, "zygote_unsupported", lambda: "no pidfds on this kernel")
    name, why = choose_launcher("zygote")
    assert name == "spawn"
    assert "no pidfds on this kernel" in why


def test_a_launcher_the_environment_names_wrongly_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LAUNCHER_ENV, "vfork")
    with pytest.raises(ConfigError, match="CORDON_LAUNCHER='vfork' is not a launcher"):
        choose_launcher(None)


def test_the_config_key_takes_zygote_or_spawn_and_nothing_else(tmp_path: Path) -> None:
    assert parse_config({"runtime": {"launcher": "spawn"}}).runtime.launcher == "spawn"
    assert parse_config({}).runtime.launcher is None
    with pytest.raises(ConfigError) as caught:
        parse_config({"runtime": {"launcher": "fork"}})
    assert [p["path"] for p in caught.value.problems] == ["runtime.launcher"]


@pytest.mark.parametrize("env", ["spawn", "zygote"])
def test_doctor_says_which_launcher_workers_get_and_what_the_machine_allows(
    tmp_path: Path, env: str
) -> None:
    config = tmp_path / "cordon.toml"
    config.write_text('[runtime]\nstate-dir = "state"\n')
    cordon = str(Path(sys.executable).with_name("cordon"))
    r = subprocess.run(
        [cordon, "doctor", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
        env={**os.environ, LAUNCHER_ENV: env},
    )
    assert r.returncode == 0, r.stderr
    launcher = json.loads(r.stdout)["launcher"]
    assert launcher["zygote_unsupported"] == zygote_unsupported()
    expected = env if env == "spawn" or zygote_unsupported() is None else "spawn"
    assert launcher["name"] == expected
    assert launcher["why"].startswith("$CORDON_LAUNCHER")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_a_host_the_pipe_page_quota_binds_leaves_worker_pipes_at_their_default() -> None:
    """As an unprivileged user (``nobody``, no capabilities) the kernel counts each pipe's
    capacity against ``pipe-user-pages-soft``: growing a thousand workers' pipes would shrink
    every later pipe of that user to 8 KiB, so none is grown. The control is this process
    (root: exempt), which grows them (the test above)."""
    code = (
        "import os, fcntl\n"
        "from cordon.runtime._supervise._launcher import StdioPipes\n"
        "p = StdioPipes()\n"
        "print(fcntl.fcntl(p.wfd, fcntl.F_GETPIPE_SZ), fcntl.fcntl(p.rfd, fcntl.F_GETPIPE_SZ))\n"
        "p.close_all()\n"
    )
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    r = subprocess.run(
        [*setpriv, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["65536", "65536"]
