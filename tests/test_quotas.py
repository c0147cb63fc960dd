"""Each limit tripped for real by examples/plugins/hog: the caller gets the typed error, the
host stays healthy, and the next call is served (by a fresh worker when the old one died).

What each limit does, exactly:

* memory (RLIMIT_AS): a MemoryError escaping a handler → QuotaExceeded(kind="memory",
  limit=RLIMIT_AS) and the worker is recycled; a worker that dies of MemoryError (or is killed
  by the RSS watchdog) → QuotaExceeded(kind="memory") for every in-flight call.
* cpu-time (RLIMIT_CPU): SIGXCPU at the soft limit, SIGKILL at soft + 1 s if the plugin
  ignores SIGXCPU → QuotaExceeded(kind="cpu") either way.
* call-timeout: a thread blocked without CPU → CallTimeout, the worker recycled as "timeout".
* processes = 0: os.fork → EPERM (audit hook), raw fork_exec → EPERM (seccomp); no child.
* open-files (RLIMIT_NOFILE): EMFILE → PluginError(exc_type="OSError"), worker lives on.
* file-size (RLIMIT_FSIZE): EFBIG → PluginError(exc_type="OSError") (CPython ignores
  SIGXFSZ); if the plugin restores SIGXFSZ's default, the worker dies → QuotaExceeded
  (kind="file-size").
* stdout flood: fd 1 is stderr in a worker; the channel is intact, each host log line bounded.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from structlog.testing import capture_logs

from cordon.runtime import (
    CallTimeout,
    PluginError,
    PluginHandle,
    QuotaExceeded,
    Runtime,
)
from cordon.runtime._supervise._worker_stderr import STDERR_LINE_MAX
from tests.conftest import EXAMPLES, base_config

pytestmark = pytest.mark.anyio

HOG = EXAMPLES / "hog"
MiB = 1024 * 1024


async def _hog(rt: Runtime) -> tuple[PluginHandle, int]:
    hog = await rt.load(HOG)
    return hog, await hog.call("pid")


async def _with_in_flight(
    hog: PluginHandle, tool: str, args: dict[str, Any], **kw: Any
) -> tuple[BaseException, BaseException]:
    """Call ``tool`` while a harmless call is in flight; return both errors."""
    errors: list[BaseException] = []
    holding = anyio.Event()

    async def bystander() -> None:
        try:
            await hog.call("hold", {"seconds": 30}, on_progress=lambda _: holding.set())
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(bystander)
        await holding.wait()
        with pytest.raises(Exception) as info:
            await hog.call(tool, args, **kw)
    return info.value, errors[0]


async def test_a_memory_error_escaping_a_handler_is_a_memory_quota_and_the_worker_is_recycled(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, memory="256 MiB")) as rt:
            hog, pid = await _hog(rt)
            with pytest.raises(QuotaExceeded) as info:
                await hog.call("memory_bomb")
            assert (info.value.kind, info.value.limit, info.value.plugin) == (
                "memory",
                256 * MiB,
                "hog",
            )
            assert await hog.call("pid") != pid
            assert hog.stats().last_exit_reason == "memory"


async def test_a_worker_dying_of_memory_error_fails_in_flight_calls_with_a_memory_quota(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, memory="256 MiB")) as rt:
            hog, pid = await _hog(rt)
            exc, bystander = await _with_in_flight(hog, "memory_bomb", {"die": True})
            for e in (exc, bystander):
                assert isinstance(e, QuotaExceeded)
                assert (e.kind, e.limit) == ("memory", 256 * MiB)
                assert "exit code 1" in e.message
            assert await hog.call("pid") != pid
            last = hog.stats().last_exit
            assert last is not None
            assert (last["reason"], last["returncode"]) == ("memory", 1)


async def test_a_worker_the_rss_watchdog_kills_fails_in_flight_calls_with_a_memory_quota(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, memory="256 MiB")) as rt:
            hog, pid = await _hog(rt)
            worker = hog.worker
            assert worker is not None

            def watchdog(_: object) -> None:
                # What PluginHandle._check_rss does when RSS is over the limit.
                worker.kill_nowait("memory", "RSS 300000000 bytes over the limit")

            with pytest.raises(QuotaExceeded) as info:
                await hog.call("hold", {"seconds": 30}, on_progress=watchdog)
            assert (info.value.kind, info.value.limit) == ("memory", 256 * MiB)
            assert "RSS 300000000 bytes" in info.value.message
            assert await hog.call("pid") != pid


@pytest.mark.parametrize(("ignore_xcpu", "sig"), [(False, signal.SIGXCPU), (True, signal.SIGKILL)])
async def test_a_cpu_spin_is_stopped_by_the_cpu_limit_as_a_cpu_quota(
    tmp_path: Path, ignore_xcpu: bool, sig: int
) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, cpu_time="1 s")) as rt:
            hog, pid = await _hog(rt)
            with capture_logs() as logs:
                exc, bystander = await _with_in_flight(hog, "spin", {"ignore_xcpu": ignore_xcpu})
            for e in (exc, bystander):
                assert isinstance(e, QuotaExceeded)
                assert (e.kind, e.limit) == ("cpu", 1)
                assert f"signal {int(sig)}" in e.message
            last = hog.stats().last_exit
            assert last is not None
            assert (last["reason"], last["signal"]) == ("cpu", sig)
            assert any(log["event"] == "quota.hit" and log["kind"] == "cpu" for log in logs)
            assert await hog.call("pid") != pid


async def test_a_sleeper_that_uses_no_cpu_is_stopped_by_the_call_timeout(rt: Runtime) -> None:
    with anyio.fail_after(60):
        hog, pid = await _hog(rt)
        with pytest.raises(CallTimeout) as info:
            await hog.call("sleeper", {"seconds": 3600}, timeout=0.5)
        assert (info.value.timeout, info.value.method) == (0.5, "sleeper")
        assert await hog.call("pid") != pid
        assert hog.stats().last_exit_reason == "timeout"


async def test_a_fork_bomb_with_processes_0_gets_eperm_and_creates_no_child(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, processes=0)) as rt:
            hog, pid = await _hog(rt)
            assert hog.sandbox["seccomp"] == "applied"
            out = await hog.call("fork_bomb", {"attempts": 20})
            assert out == {"fork": ["EPERM"] * 20, "fork_exec": ["EPERM"] * 20, "children": 0}
            assert psutil.Process(pid).children(recursive=True) == []
            assert await hog.call("pid") == pid
            assert hog.stats().restarts == 0


async def test_an_fd_leak_gets_emfile_and_the_worker_serves_on(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, open_files=32)) as rt:
            hog, pid = await _hog(rt)
            with pytest.raises(PluginError) as info:
                await hog.call("fd_leak")
            assert info.value.exc_type == "OSError"
            assert f"[Errno {errno.EMFILE}]" in str(info.value.exc_message)
            assert psutil.Process(pid).num_fds() <= 32
            # The channel still works and, once the plugin lets go, so does opening files.
            assert await hog.call("release_fds") > 0
            assert await hog.call("big_file", {"size": 1024}) == 1024
            assert await hog.call("pid") == pid


async def test_a_big_file_write_fails_with_efbig_at_the_file_size_limit(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, file_size="1 MiB")) as rt:
            hog, pid = await _hog(rt)
            with pytest.raises(PluginError) as info:
                await hog.call("big_file", {"size": 2 * MiB})
            assert info.value.exc_type == "OSError"
            assert f"[Errno {errno.EFBIG}]" in str(info.value.exc_message)
            assert await hog.call("big_file", {"size": MiB}) == MiB
            assert await hog.call("pid") == pid


async def test_a_plugin_that_restores_sigxfsz_dies_of_it_as_a_file_size_quota(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, file_size="1 MiB")) as rt:
            hog, pid = await _hog(rt)
            with pytest.raises(QuotaExceeded) as info:
                await hog.call("big_file", {"size": 2 * MiB, "default_sigxfsz": True})
            assert (info.value.kind, info.value.limit) == ("file-size", MiB)
            assert f"signal {int(signal.SIGXFSZ)}" in info.value.message
            assert await hog.call("pid") != pid


async def test_a_stdout_flood_leaves_the_channel_intact_and_host_log_lines_bounded(
    rt: Runtime,
) -> None:
    with anyio.fail_after(60):
        hog, pid = await _hog(rt)
        with capture_logs() as logs:
            assert await hog.call("stdout_flood", {"lines": 2000}) == 2000
            assert await hog.call("ok") == "ok"
        lines = [log["line"] for log in logs if log["event"] == "plugin.output"]
        assert lines
        assert max(len(line) for line in lines) <= STDERR_LINE_MAX + len(" [truncated]")
        assert await hog.call("pid") == pid
        worker = hog.worker
        assert worker is not None
        assert worker.stderr_dropped > 0  # the 100 kB raw line was cut, not buffered
        assert hog.stats().restarts == 0
