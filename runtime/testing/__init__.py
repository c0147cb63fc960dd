"""Fault harness for testing code that hosts cordon plugins: fixtures and real fault injection.

Enable the fixtures in a test module or the root ``conftest.py`` (cordon registers no pytest
entry point, so nothing happens unless you ask)::

    pytest_plugins = ["cordon.testing"]

Then break a live worker and assert what your code sees::

    import anyio
    import pytest
    from cordon.runtime import QuotaExceeded, WorkerCrashed
    from cordon.testing import exhaust_memory, hang, kill

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def anyio_backend():
        return "asyncio"

    async def test_my_service_survives_a_killed_plugin(cordon_runtime):
        with anyio.fail_after(30):
            hello = await cordon_runtime.load("examples/plugins/hello")
            await hello.call("greet", {"name": "Ada"})      # the worker starts on first use
            info = await kill(cordon_runtime, "hello")      # SIGKILL; returns its ExitInfo
            assert info.reason == "signal"
            assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"  # restarted

    async def test_with_a_memory_limit(cordon_runtime_factory):
        async with cordon_runtime_factory(memory="128 MiB") as rt:
            hello = await rt.load("examples/plugins/hello")
            await hello.call("echo", {"value": 1})
            assert (await exhaust_memory(rt, "hello")).reason == "memory"

Fixtures:

* ``cordon_runtime`` — a running :class:`Runtime` with its state in the test's ``tmp_path``
  and fault injection enabled; the test fails if any worker process outlives it.
* ``cordon_runtime_factory`` — ``factory(**defaults)`` is an async context manager giving such
  a runtime, with operator ``[defaults]`` keys as keyword arguments (``cpu_time="1 s"``,
  ``restart={"max": 2}``, ...; underscores become dashes).

Faults (each targets the live worker of ``plugin_id``; start it with a call first). Every
fault is a coroutine, awaited the same way — ``await fault(rt, plugin_id, ...)`` — and
returns once the fault has taken effect:

* :func:`kill` — send a signal (SIGKILL by default); waits for the exit, returns its
  :class:`ExitInfo`.
* :func:`hang` / :func:`resume` — SIGSTOP / SIGCONT the worker's process group; each returns
  once the kernel shows the worker stopped / running again. A hung worker stops answering:
  calls time out, and an idle one fails its health ping and is killed as ``unresponsive``.
* :func:`delay_replies` — hold every answer from the worker for ``seconds`` (host side;
  ``0`` stops it), from the next answer on. Pings are delayed too.
* :func:`exhaust_memory` — the worker allocates until RLIMIT_AS refuses and dies of the
  MemoryError: in-flight calls get ``QuotaExceeded(kind="memory")``. Needs a memory limit.
* :func:`burn_cpu` — the worker burns ``seconds`` of CPU in a thread; past the cpu-time limit
  the kernel kills it (in-flight calls get ``QuotaExceeded(kind="cpu")``).
* :func:`corrupt_channel` — the worker writes garbage onto the protocol channel; the host
  kills it as ``protocol-violation``.

The last three need the worker's cooperation through the ``$/fault`` request, which a worker
honours only when its runtime has ``enable_faults = True`` (the fixtures set it). A production
runtime never does, and its workers answer ``$/fault`` with MethodNotFound.
"""

from __future__ import annotations

import os
import signal as _signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel
import psutil
import pytest

from cordon.protocol import CordonError, MethodNotFound
from cordon.protocol._methods import FAULT, FaultParams
from cordon.runtime._core._runtime import Runtime
from cordon.runtime._supervise._worker import ExitInfo, WorkerProcess

if __name__ != "cordon.testing":
    # The folder sits inside runtime/, so a development checkout could also import it as
    # cordon.runtime.testing: a second copy, with a second set of fixtures. An install has
    # only cordon.testing; make a checkout say so too.
    raise ImportError(f"import cordon.testing, not {__name__}")

__all__ = [
    "EXIT_WAIT",
    "burn_cpu",
    "cordon_runtime",
    "cordon_runtime_factory",
    "corrupt_channel",
    "delay_replies",
    "exhaust_memory",
    "hang",
    "kill",
    "leaked_workers",
    "resume",
]

#: How long a fault waits for the worker it broke to exit (the kernel reaps in milliseconds),
#: or for a stop/continue signal to show (the kernel delivers it on the next schedule).
EXIT_WAIT: Final = 30.0
#: How often :func:`hang` and :func:`resume` look at the worker's state while they wait.
_STATE_POLL: Final = 0.002


# -- fault injection --------------------------------------------------------------------------


def _worker(rt: Runtime, plugin_id: str) -> WorkerProcess:
    worker = rt.get(plugin_id).worker
    if worker is None or worker.exit is not None or worker.pid is None:
        raise RuntimeError(
            f"plugin {plugin_id!r} has no live worker to inject a fault into "
            "(workers start on first use: call the plugin first)"
        )
    return worker


async def _exit_of(worker: WorkerProcess) -> ExitInfo:
    with anyio.fail_after(EXIT_WAIT):
        await worker.exited.wait()
    assert worker.exit is not None
    return worker.exit


async def kill(rt: Runtime, plugin_id: str, signal: int = _signal.SIGKILL) -> ExitInfo:
    """Send ``signal`` to the worker process and return how it ended (a signal the worker
    survives, such as SIGCONT, would wait :data:`EXIT_WAIT` and raise TimeoutError)."""
    worker = _worker(rt, plugin_id)
    assert worker.pid is not None
    os.kill(worker.pid, signal)
    return await _exit_of(worker)


async def _until_stopped(worker: WorkerProcess, stopped: bool) -> None:
    """Wait until the kernel shows the worker stopped (or not): a signal is delivered when
    the process is next scheduled, not by the time ``kill`` returns."""
    assert worker.pid is not None
    proc = psutil.Process(worker.pid)
    with anyio.fail_after(EXIT_WAIT):
        while worker.exit is None:
            try:
                status = proc.status()
            except psutil.NoSuchProcess:
                return  # it died meanwhile; the caller's next call will see how
            if (status == psutil.STATUS_STOPPED) is stopped:
                return
            await anyio.sleep(_STATE_POLL)


async def hang(rt: Runtime, plugin_id: str) -> None:
    """Freeze the worker (SIGSTOP to its process group): it stops answering anything.
    Returns once the worker is stopped."""
    worker = _worker(rt, plugin_id)
    assert worker.pid is not None
    os.killpg(worker.pid, _signal.SIGSTOP)
    await _until_stopped(worker, True)


async def resume(rt: Runtime, plugin_id: str) -> None:
    """Undo :func:`hang` (SIGCONT), if the worker was not killed for it meanwhile. Returns
    once the worker runs again."""
    worker = _worker(rt, plugin_id)
    assert worker.pid is not None
    os.killpg(worker.pid, _signal.SIGCONT)
    await _until_stopped(worker, False)


async def delay_replies(rt: Runtime, plugin_id: str, seconds: float) -> None:
    """Hold every response from the worker ``seconds`` before delivering it (0 to stop).
    Nothing to wait for — it is a coroutine so that every fault is awaited alike."""
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    _worker(rt, plugin_id).reply_delay = seconds
    await anyio.lowlevel.checkpoint()


async def _fault(worker: WorkerProcess, params: FaultParams) -> Any:
    try:
        return await worker.request(FAULT, params, timeout=None)
    except MethodNotFound:
        raise RuntimeError(
            "the worker does not take $/fault requests: start the Runtime with "
            "enable_faults = True (the cordon_runtime fixtures do)"
        ) from None


async def exhaust_memory(rt: Runtime, plugin_id: str) -> ExitInfo:
    """Make the worker allocate until its memory limit refuses and die of the MemoryError;
    return its :class:`ExitInfo` (reason ``memory``)."""
    worker = _worker(rt, plugin_id)
    try:
        await _fault(worker, FaultParams(kind="memory"))
    except CordonError:
        if worker.exit is None:
            raise  # refused (InvalidParams: no memory limit to exhaust), still alive
    return await _exit_of(worker)


async def burn_cpu(rt: Runtime, plugin_id: str, seconds: float) -> ExitInfo | None:
    """Make the worker burn ``seconds`` of CPU time. Returns ``None`` if it survived, or its
    :class:`ExitInfo` if the cpu-time limit (or anything else) ended it meanwhile."""
    worker = _worker(rt, plugin_id)
    try:
        await _fault(worker, FaultParams(kind="cpu", seconds=seconds))
    except CordonError:
        if worker.exit is None:
            raise
        return worker.exit
    return None


async def corrupt_channel(rt: Runtime, plugin_id: str) -> ExitInfo:
    """Make the worker write garbage onto its protocol channel; return its
    :class:`ExitInfo` (reason ``protocol-violation``)."""
    worker = _worker(rt, plugin_id)
    try:
        await _fault(worker, FaultParams(kind="corrupt"))
    except CordonError:
        pass
    return await _exit_of(worker)


# -- fixtures ---------------------------------------------------------------------------------


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def leaked_workers(before: set[int], wait: float = 5.0) -> list[int]:
    """Child processes not in ``before`` still alive after ``wait`` seconds (then killed)."""
    leaked = []
    for pid in _children() - before:
        try:
            proc = psutil.Process(pid)
            proc.wait(timeout=wait)
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            leaked.append(pid)
            proc.kill()
    return leaked


def _config(state_dir: Path, defaults: dict[str, Any]) -> dict[str, Any]:
    return {
        "runtime": {"state-dir": str(state_dir)},
        "defaults": {k.replace("_", "-"): v for k, v in defaults.items()},
    }


@pytest.fixture
def cordon_runtime_factory(
    tmp_path: Path,
) -> Callable[..., AbstractAsyncContextManager[Runtime]]:
    """``async with cordon_runtime_factory(**defaults) as rt``: a fault-enabled runtime with
    its state under ``tmp_path``; fails the test if a worker outlives it."""
    count = 0

    @asynccontextmanager
    async def factory(**defaults: Any) -> AsyncIterator[Runtime]:
        nonlocal count
        count += 1
        before = _children()
        rt = Runtime(_config(tmp_path / f"cordon-state-{count}", defaults))
        rt.enable_faults = True
        async with rt:
            yield rt
        leaked = leaked_workers(before)
        if leaked:
            pytest.fail(f"cordon worker processes outlived their runtime: {leaked}")

    return factory


@pytest.fixture
async def cordon_runtime(
    cordon_runtime_factory: Callable[..., AbstractAsyncContextManager[Runtime]],
) -> AsyncIterator[Runtime]:
    """A running, fault-enabled :class:`Runtime` with built-in defaults and state under
    ``tmp_path``; the test fails if a worker process outlives it."""
    async with cordon_runtime_factory() as rt:
        yield rt
