"""The public fault harness, cordon.testing, used as a plugin author would: its
fixtures, and each fault against a live hello or crashy worker with the typed outcome."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

from cordon.protocol._methods import FAULT, FaultParams
from cordon.runtime import (
    CallTimeout,
    MethodNotFound,
    PluginHandle,
    QuotaExceeded,
    Runtime,
    WorkerCrashed,
)

# As a user enables the harness. Its functions are imported inside the tests: importing the
# module here, before pytest loads it as a plugin, would bypass pytest's assert rewriting.
pytest_plugins = ["cordon.testing"]
pytestmark = pytest.mark.anyio

Factory = Callable[..., AbstractAsyncContextManager[Runtime]]


async def _start(rt: Runtime, plugin_dir: Path) -> tuple[PluginHandle, int]:
    handle = await rt.load(plugin_dir)
    await handle.call("ok" if handle.id == "crashy" else "whoami")
    pid = handle.stats().pid
    assert pid is not None
    return handle, pid


class InFlight:
    """A crashy ``wait`` call in flight while a fault hits; keeps what it ended with."""

    def __init__(self, crashy: PluginHandle) -> None:
        self.crashy = crashy
        self.waiting = anyio.Event()
        self.error: BaseException | None = None

    async def run(self) -> None:
        try:
            await self.crashy.call(
                "wait", {"seconds": 60}, on_progress=lambda _: self.waiting.set()
            )
        except Exception as exc:
            self.error = exc


async def test_kill_ends_the_worker_with_the_signal_and_in_flight_calls_see_it(
    cordon_runtime: Runtime, crashy_dir: Path
) -> None:
    from cordon.testing import kill

    with anyio.fail_after(60):
        crashy, pid = await _start(cordon_runtime, crashy_dir)
        call = InFlight(crashy)
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            await call.waiting.wait()
            info = await kill(cordon_runtime, "crashy")
        assert (info.reason, info.signal, info.returncode) == ("signal", signal.SIGKILL, -9)
        assert isinstance(call.error, WorkerCrashed)
        assert (call.error.reason, call.error.signal) == ("signal", signal.SIGKILL)
        assert await crashy.call("ok") == "ok"
        assert crashy.stats().pid != pid


async def test_kill_with_sigterm_is_classified_as_a_signal(
    cordon_runtime: Runtime, hello_dir: Path
) -> None:
    from cordon.testing import kill

    with anyio.fail_after(60):
        await _start(cordon_runtime, hello_dir)
        info = await kill(cordon_runtime, "hello", signal.SIGTERM)
        assert (info.reason, info.signal) == ("signal", signal.SIGTERM)


async def test_a_hung_worker_times_calls_out_and_is_replaced(
    cordon_runtime: Runtime, hello_dir: Path
) -> None:
    from cordon.testing import hang

    with anyio.fail_after(60):
        hello, pid = await _start(cordon_runtime, hello_dir)
        worker = hello.worker
        assert worker is not None
        await hang(cordon_runtime, "hello")
        with pytest.raises(CallTimeout) as info:
            await hello.call("greet", {"name": "Ada"}, timeout=0.3)
        assert info.value.timeout == 0.3
        await worker.exited.wait()  # killed: it could not even acknowledge the cancel
        assert worker.exit is not None
        assert worker.exit.reason == "timeout"
        assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"
        assert hello.stats().pid != pid


async def test_a_resumed_worker_answers_again(cordon_runtime: Runtime, hello_dir: Path) -> None:
    from cordon.testing import hang, resume

    with anyio.fail_after(60):
        hello, pid = await _start(cordon_runtime, hello_dir)
        await hang(cordon_runtime, "hello")
        await resume(cordon_runtime, "hello")
        assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"
        assert hello.stats().pid == pid


async def test_delayed_replies_arrive_late_and_time_calls_out(
    cordon_runtime: Runtime, hello_dir: Path
) -> None:
    from cordon.testing import delay_replies

    with anyio.fail_after(60):
        hello, pid = await _start(cordon_runtime, hello_dir)
        await delay_replies(cordon_runtime, "hello", 0.3)
        started = time.monotonic()
        assert await hello.call("echo", {"value": 1}) == 1
        assert time.monotonic() - started >= 0.3
        with pytest.raises(CallTimeout):
            await hello.call("echo", {"value": 2}, timeout=0.1)
        await delay_replies(cordon_runtime, "hello", 0)
        assert await hello.call("echo", {"value": 3}) == 3
        # The late answer came within the cancel grace: nothing was killed.
        assert hello.stats().pid == pid


async def test_exhausted_memory_kills_the_worker_and_in_flight_calls_get_a_memory_quota(
    cordon_runtime_factory: Factory, crashy_dir: Path
) -> None:
    from cordon.testing import exhaust_memory

    with anyio.fail_after(60):
        async with cordon_runtime_factory(memory="128 MiB") as rt:
            crashy, pid = await _start(rt, crashy_dir)
            call = InFlight(crashy)
            async with anyio.create_task_group() as tg:
                tg.start_soon(call.run)
                await call.waiting.wait()
                info = await exhaust_memory(rt, "crashy")
            assert (info.reason, info.returncode, info.limit) == ("memory", 1, 128 * 1024**2)
            assert isinstance(call.error, QuotaExceeded)
            assert (call.error.kind, call.error.limit) == ("memory", 128 * 1024**2)
            assert await crashy.call("ok") == "ok"
            assert crashy.stats().pid != pid


async def test_burning_cpu_past_the_limit_kills_the_worker_as_a_cpu_quota(
    cordon_runtime_factory: Factory, crashy_dir: Path
) -> None:
    from cordon.testing import burn_cpu

    with anyio.fail_after(60):
        async with cordon_runtime_factory(cpu_time="1 s") as rt:
            crashy, pid = await _start(rt, crashy_dir)
            call = InFlight(crashy)
            async with anyio.create_task_group() as tg:
                tg.start_soon(call.run)
                await call.waiting.wait()
                info = await burn_cpu(rt, "crashy", 5)
            assert info is not None
            assert (info.reason, info.signal) == ("cpu", signal.SIGXCPU)
            assert isinstance(call.error, QuotaExceeded)
            assert (call.error.kind, call.error.limit) == ("cpu", 1)
            assert await crashy.call("ok") == "ok"
            assert crashy.stats().pid != pid


async def test_burning_cpu_under_the_limit_leaves_the_worker_alive(
    cordon_runtime: Runtime, hello_dir: Path
) -> None:
    from cordon.testing import burn_cpu

    with anyio.fail_after(60):
        hello, pid = await _start(cordon_runtime, hello_dir)
        assert await burn_cpu(cordon_runtime, "hello", 0.1) is None
        assert hello.stats().pid == pid


async def test_a_corrupted_channel_is_a_protocol_violation(
    cordon_runtime: Runtime, crashy_dir: Path
) -> None:
    from cordon.testing import corrupt_channel

    with anyio.fail_after(60):
        crashy, pid = await _start(cordon_runtime, crashy_dir)
        call = InFlight(crashy)
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            await call.waiting.wait()
            info = await corrupt_channel(cordon_runtime, "crashy")
        assert info.reason == "protocol-violation"
        assert isinstance(call.error, WorkerCrashed)
        assert call.error.reason == "protocol-violation"
        assert await crashy.call("ok") == "ok"
        assert crashy.stats().pid != pid


async def test_a_production_worker_has_no_fault_door(rt: Runtime, hello_dir: Path) -> None:
    from cordon.testing import exhaust_memory

    with anyio.fail_after(60):
        hello, pid = await _start(rt, hello_dir)
        worker = hello.worker
        assert worker is not None
        with pytest.raises(MethodNotFound):
            await worker.request(FAULT, FaultParams(kind="corrupt"), timeout=None)
        with pytest.raises(RuntimeError, match="enable_faults"):
            await exhaust_memory(rt, "hello")
        assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"
        assert hello.stats().pid == pid


async def test_a_fault_needs_a_live_worker(cordon_runtime: Runtime, hello_dir: Path) -> None:
    from cordon.testing import hang

    with anyio.fail_after(60):
        await cordon_runtime.load(hello_dir)
        with pytest.raises(RuntimeError, match="no live worker"):
            await hang(cordon_runtime, "hello")


def test_leaked_workers_finds_and_kills_a_child_that_outlives_its_runtime() -> None:
    from cordon.testing import _children, leaked_workers

    before = _children()
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert leaked_workers(before, wait=0.1) == [child.pid]
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_the_readme_example_passes_as_written(tmp_path: Path) -> None:
    # The README's example, split where it says so, run by pytest in a process of its own.
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing with faults", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    conftest, _, tests = code.partition("# test_resilience.py\n")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_resilience.py").write_text(tests)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_every_fault_is_a_coroutine_function_awaited_alike() -> None:
    import inspect

    import cordon.testing

    faults = ["kill", "hang", "resume", "delay_replies", "exhaust_memory", "burn_cpu"]
    faults.append("corrupt_channel")
    assert set(faults) <= set(cordon.testing.__all__)
    assert [f for f in faults if not inspect.iscoroutinefunction(getattr(cordon.testing, f))] == []


async def test_hang_returns_with_the_worker_stopped_and_resume_with_it_running(
    cordon_runtime: Runtime, hello_dir: Path
) -> None:
    import psutil

    from cordon.testing import hang, resume

    with anyio.fail_after(60):
        _, pid = await _start(cordon_runtime, hello_dir)
        await hang(cordon_runtime, "hello")
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
        await resume(cordon_runtime, "hello")
        assert psutil.Process(pid).status() != psutil.STATUS_STOPPED


async def test_a_negative_reply_delay_is_refused(cordon_runtime: Runtime, hello_dir: Path) -> None:
    from cordon.testing import delay_replies

    with anyio.fail_after(60):
        await _start(cordon_runtime, hello_dir)
        with pytest.raises(ValueError, match="seconds must be >= 0"):
            await delay_replies(cordon_runtime, "hello", -1)
