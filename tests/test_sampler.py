"""The fleet pass (runtime/_supervise/_sampler.py): one task per runtime samples CPU time for
the cpu-time limit's exit classification, runs the RSS watchdog, and pings only the idle
workers that ran something since they last answered — all against real sandboxed workers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
import pytest

from cordon.runtime import PluginHandle, QuotaExceeded, Runtime, WorkerCrashed
from cordon.runtime._supervise._sampler import read_stat, read_switches
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

HOG = EXAMPLES / "hog"
IDLER = TEST_PLUGINS / "idler"
#: Every wait in these tests is bounded by this.
DEADLINE = 60
#: Short enough that the pass looks at a worker many times within a test.
QUICK = {"health_interval": "0.05 s", "health_timeout": "1 s"}
#: Passes over a quiet worker after which it must still not have been pinged.
QUIET_PASSES = 20
#: Passes without a ping after which a worker counts as found quiet.
SETTLE = 5
#: At most this many pings before a worker that runs nothing is found quiet (one; a second
#: if the worker had not yet gone back to wait when the pass read it).
PINGS_TO_SETTLE = 2


async def _passes(rt: Runtime, n: int) -> None:
    """Wait for ``n`` more passes of the runtime's sampler (events, not time)."""
    for _ in range(n):
        await rt._sampler.passed.wait()


async def _until(rt: Runtime, predicate: Callable[[], bool]) -> None:
    """Wait, pass by pass, until ``predicate`` holds (callers bound it by fail_after)."""
    while not predicate():
        await rt._sampler.passed.wait()


def test_proc_readings_match_the_kernel_for_this_process() -> None:
    stat = read_stat(os.getpid())
    assert stat is not None
    times = os.times()
    assert abs(stat.cpu_seconds - (times.user + times.system)) < 0.05
    assert stat.rss_bytes > 1 << 20 and not stat.stopped and not stat.ended
    assert read_stat(2**22 + 7) is None  # above pid_max's default: nobody


async def test_a_sigkill_at_the_cpu_hard_limit_is_a_cpu_quota_through_the_fleet_pass(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, cpu_time="1 s")) as rt:
            hog = await rt.load(HOG)
            await hog.call("ok")
            worker = hog.worker
            assert worker is not None and worker.cpu_watch == rt._sampler.watch_cpu
            with pytest.raises(QuotaExceeded) as info:
                await hog.call("spin", {"ignore_xcpu": True})
            assert (info.value.kind, info.value.limit) == ("cpu", 1)
            assert worker.exit is not None and worker.exit.signal == signal.SIGKILL
            assert worker.cpu_seconds is not None and worker.cpu_seconds >= 1


async def test_without_the_fleet_passs_cpu_sample_the_same_sigkill_is_only_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: the classification above comes from the pass's sample, nothing else.
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, cpu_time="1 s")) as rt:
            monkeypatch.setattr(rt._sampler, "watch_cpu", lambda worker: None)
            hog = await rt.load(HOG)
            with pytest.raises(WorkerCrashed) as info:
                await hog.call("spin", {"ignore_xcpu": True})
            assert (info.value.reason, info.value.signal) == ("signal", signal.SIGKILL)


async def test_a_worker_whose_rss_is_over_its_limit_is_killed_by_the_pass_as_a_memory_quota(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, memory="256 MiB", **QUICK)) as rt:
            hog = await rt.load(HOG)
            pid = await hog.call("pid")
            worker = hog.worker
            assert worker is not None
            rss = read_stat(pid)
            assert rss is not None
            async with anyio.create_task_group() as tg:
                errors: list[BaseException] = []

                async def hold() -> None:
                    try:
                        await hog.call("hold", {"seconds": 30})
                    except QuotaExceeded as exc:
                        errors.append(exc)

                tg.start_soon(hold)
                # Under its limit, the watchdog leaves it alone pass after pass...
                await _passes(rt, QUIET_PASSES)
                assert worker.exit is None
                # ... and once the limit is below what it really holds (RLIMIT_AS stays as
                # the worker started; the watchdog reads the plugin's settings each pass),
                # the next pass kills it.
                limit = rss.rss_bytes // 2
                configured = hog.settings
                hog.settings = msgspec.structs.replace(configured, memory=limit)
                await worker.exited.wait()
                # Before its restart (after a backoff): the next worker gets the real limit.
                hog.settings = configured
            assert worker.exit is not None and worker.exit.reason == "memory"
            assert f"over the {limit}-byte limit" in str(worker.exit.detail)
            assert len(errors) == 1 and isinstance(errors[0], QuotaExceeded)
            assert errors[0].kind == "memory"


async def _confirmed_quiet(rt: Runtime, handle: PluginHandle) -> int:
    """Wait until the pass has pinged the idle worker (after its last call) and then stopped
    pinging it for SETTLE passes in a row; return the count. A worker that has just been
    busy may wake once more on its own after an answer (and is asked again): a few pings,
    then none."""
    worker = handle.worker
    assert worker is not None
    await _until(rt, lambda: handle.health_checks >= 1)
    while True:
        seen = handle.health_checks
        await _passes(rt, SETTLE)
        assert worker.exit is None, f"the worker died before it was found quiet: {worker.exit}"
        if handle.health_checks == seen:
            return seen


async def test_an_idle_worker_that_runs_nothing_gets_no_health_pings(tmp_path: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, **QUICK)) as rt:
            hello = await rt.load(EXAMPLES / "hello")
            await hello.call("greet", {"name": "Ada"})
            assert read_switches(os.getpid()) is not None, "no voluntary switch count"
            pinged = await _confirmed_quiet(rt, hello)
            checks = rt._sampler.checks
            await _passes(rt, QUIET_PASSES)
            assert rt._sampler.checks >= checks + QUIET_PASSES
            assert hello.health_checks == pinged <= PINGS_TO_SETTLE
            assert hello.stats().health_checks == pinged
            # A call makes it active again: it is asked again once it goes quiet, then not.
            await hello.call("greet", {"name": "Bo"})
            again = await _confirmed_quiet(rt, hello)
            assert pinged < again <= pinged + PINGS_TO_SETTLE
            await _passes(rt, QUIET_PASSES)
            assert hello.health_checks == again


async def test_an_idle_worker_running_code_is_pinged_pass_after_pass(tmp_path: Path) -> None:
    # The control for the test above: the same pass does ping a worker that runs something.
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, **QUICK)) as rt:
            idler = await rt.load(IDLER)
            await idler.call("busy_in_background", {"seconds": 30})
            # Never found quiet: every pass sees its CPU time moved, and asks.
            await _until(rt, lambda: idler.health_checks >= QUIET_PASSES // 2)
            worker = idler.worker
            assert worker is not None and worker.exit is None


async def test_an_idle_worker_whose_loop_hangs_on_a_timer_is_killed_as_unresponsive(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, **QUICK)) as rt:
            idler = await rt.load(IDLER)
            await idler.call("ok")
            worker = idler.worker
            assert worker is not None
            # Nothing in flight: the wedge comes from a timer after the call has answered.
            await idler.call("wedge_later", {"after": 0.2})
            await worker.exited.wait()
            assert worker.exit is not None
            assert (worker.exit.reason, worker.exit.signal) == ("unresponsive", signal.SIGKILL)
            assert "no answer to ping" in str(worker.exit.detail)


async def test_an_idle_worker_found_quiet_that_then_hangs_is_killed_as_unresponsive(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, **QUICK)) as rt:
            idler = await rt.load(IDLER)
            await idler.call("wedge_on_signal")
            pinged = await _confirmed_quiet(rt, idler)
            worker = idler.worker
            assert worker is not None and worker.pid is not None
            # The loop runs the handler and never comes back: nothing in flight, nothing
            # said; only the main thread's time on a CPU shows that it ran.
            os.kill(worker.pid, signal.SIGUSR1)
            await worker.exited.wait()
            assert worker.exit is not None
            assert (worker.exit.reason, worker.exit.signal) == ("unresponsive", signal.SIGKILL)
            assert idler.health_checks == pinged + 1


async def test_an_idle_worker_stopped_after_it_was_found_quiet_is_killed_as_unresponsive(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, **QUICK)) as rt:
            hello = await rt.load(EXAMPLES / "hello")
            await hello.call("greet", {"name": "Ada"})
            await _confirmed_quiet(rt, hello)
            worker = hello.worker
            assert worker is not None and worker.pid is not None
            # SIGSTOP runs no code in it: only the kernel's "stopped" state gives it away.
            os.kill(worker.pid, signal.SIGSTOP)
            await worker.exited.wait()
            assert worker.exit is not None and worker.exit.reason == "unresponsive"


async def test_a_stopped_worker_leaves_the_pass(tmp_path: Path) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path, **QUICK)) as rt:
            hello = await rt.load(EXAMPLES / "hello")
            await hello.call("greet", {"name": "Ada"})
            assert len(rt._sampler) == 1
            await hello.stop()
            assert len(rt._sampler) == 0
