"""Every way crashy can die, while other calls are in flight: all of them fail at once with a
typed WorkerCrashed, the host stays healthy, and the next call is served by a fresh worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import (
    CallTimeout,
    PluginHandle,
    QuotaExceeded,
    Runtime,
    WorkerCrashed,
)

pytestmark = pytest.mark.anyio

IN_FLIGHT = 3


async def _crash_under_load(
    crashy: PluginHandle, tool: str, args: dict[str, Any], timeout: float | None = None
) -> tuple[BaseException, list[BaseException]]:
    """Start IN_FLIGHT waiting calls, then make the worker die with ``tool``."""
    waiting: list[BaseException] = []
    started = 0
    all_started = anyio.Event()

    def on_progress(_: object) -> None:
        nonlocal started
        started += 1
        if started == IN_FLIGHT:
            all_started.set()

    async def wait_call() -> None:
        try:
            await crashy.call("wait", {"seconds": 60}, on_progress=on_progress)
        except Exception as exc:
            waiting.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(IN_FLIGHT):
            tg.start_soon(wait_call)
        await all_started.wait()
        with pytest.raises(Exception) as info:
            await crashy.call(tool, args, timeout=timeout)
    return info.value, waiting


@pytest.mark.parametrize(
    ("tool", "args", "reason", "returncode"),
    [
        ("exit_now", {"code": 3}, "exited", 3),
        ("abort", {}, "signal", -6),
        ("garbage", {}, "protocol-violation", -9),
    ],
)
async def test_a_dying_worker_fails_every_in_flight_call_with_the_reason(
    rt: Runtime, crashy_dir: Path, tool: str, args: dict[str, Any], reason: str, returncode: int
) -> None:
    with anyio.fail_after(60):
        crashy = await rt.load(crashy_dir)
        first_pid = (await crashy.call("ok"), crashy.stats().pid)[1]
        exc, waiting = await _crash_under_load(crashy, tool, args)
        assert isinstance(exc, WorkerCrashed)
        assert (exc.reason, exc.returncode, exc.plugin) == (reason, returncode, "crashy")
        assert len(waiting) == IN_FLIGHT
        assert all(isinstance(w, WorkerCrashed) and w.reason == reason for w in waiting)
        # Recovered: a new worker serves the next call.
        assert await crashy.call("ok") == "ok"
        stats = crashy.stats()
        assert stats.pid != first_pid
        assert stats.restarts == 1
        assert stats.last_exit_reason == reason


async def test_exit_reports_the_tail_of_stderr(rt: Runtime, crashy_dir: Path) -> None:
    with anyio.fail_after(30):
        crashy = await rt.load(crashy_dir)
        with pytest.raises(WorkerCrashed) as info:
            await crashy.call("exit_now", {"code": 9})
    assert "crashy: exiting with 9" in (info.value.stderr_tail or [])


@pytest.mark.parametrize("tool", ["spin", "block_loop"])
async def test_a_call_that_ignores_cancellation_times_out_and_the_worker_is_replaced(
    rt: Runtime, crashy_dir: Path, tool: str
) -> None:
    with anyio.fail_after(60):
        crashy = await rt.load(crashy_dir)
        await crashy.call("ok")
        first_pid = crashy.stats().pid
        exc, waiting = await _crash_under_load(crashy, tool, {}, timeout=0.5)
        assert isinstance(exc, CallTimeout)
        assert (exc.timeout, exc.plugin) == (0.5, "crashy")
        assert all(isinstance(w, WorkerCrashed) and w.reason == "timeout" for w in waiting)
        assert await crashy.call("ok") == "ok"
        assert crashy.stats().pid != first_pid


async def test_a_result_over_the_message_limit_is_refused_and_the_worker_lives(
    tmp_path: Path, crashy_dir: Path
) -> None:
    from tests.conftest import base_config

    with anyio.fail_after(60):
        async with Runtime(base_config(tmp_path, max_message="1 MiB")) as rt:
            crashy = await rt.load(crashy_dir)
            await crashy.call("ok")
            pid = crashy.stats().pid
            with pytest.raises(QuotaExceeded) as info:
                await crashy.call("huge", {"size": 2 * 1024 * 1024})
            assert info.value.kind == "message-size"
            assert await crashy.call("ok") == "ok"
            assert crashy.stats().pid == pid


async def test_a_stderr_flood_is_bounded_and_harmless(rt: Runtime, crashy_dir: Path) -> None:
    with anyio.fail_after(60):
        crashy = await rt.load(crashy_dir)
        assert await crashy.call("flood_stderr", {"lines": 5000}) == 5000
        assert await crashy.call("ok") == "ok"
        worker = crashy.worker
        assert worker is not None
        assert worker.stderr_dropped > 0  # the 100 kB line was cut, not buffered
        assert crashy.stats().restarts == 0
