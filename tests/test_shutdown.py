"""Leaving the runtime, however it is left, leaves no process behind; nor does a dying host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import psutil
import pytest

from cordon.runtime import Runtime
from tests.conftest import base_config

pytestmark = pytest.mark.anyio


def _gone(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return proc.status() == psutil.STATUS_ZOMBIE


async def test_leaving_the_block_normally_stops_every_worker(
    tmp_path: Path, hello_dir: Path, probe_dir: Path
) -> None:
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path)) as rt:
            pids = []
            for d in (hello_dir, probe_dir):
                handle = await rt.load(d)
                pids.append(await handle.call("pid") if d == probe_dir else None)
            await rt.get("hello").call("greet", {"name": "x"})
            pids[0] = rt.get("hello").stats().pid
        assert all(_gone(pid) for pid in pids if pid)


async def test_an_exception_in_the_block_still_stops_every_worker(
    tmp_path: Path, probe_dir: Path
) -> None:
    pid = 0
    with anyio.fail_after(30), pytest.raises(RuntimeError, match="app failed"):
        async with Runtime(base_config(tmp_path)) as rt:
            probe = await rt.load(probe_dir)
            pid = await probe.call("pid")
            raise RuntimeError("app failed")
    assert pid
    assert _gone(pid)


async def test_cancellation_with_calls_in_flight_stops_every_worker(
    tmp_path: Path, probe_dir: Path
) -> None:
    pid = 0
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with Runtime(base_config(tmp_path)) as rt:
                probe = await rt.load(probe_dir)
                pid = await probe.call("pid")
                in_flight = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        lambda: probe.call(
                            "hold", {"gate": "never"}, on_progress=lambda _: in_flight.set()
                        )
                    )
                    await in_flight.wait()
                    scope.cancel()
        assert scope.cancelled_caught
    assert _gone(pid)


async def test_a_killed_host_takes_its_workers_with_it(tmp_path: Path, probe_dir: Path) -> None:
    host = textwrap.dedent(
        f"""
        import anyio, sys
        from cordon.runtime import Runtime

        async def main():
            cfg = {{"runtime": {{"state-dir": {str(tmp_path / "state")!r}}}}}
            async with Runtime(cfg) as rt:
                probe = await rt.load({str(probe_dir)!r})
                print("PID", await probe.call("pid"), flush=True)
                await anyio.sleep_forever()

        anyio.run(main)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", host], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            line = ""
            while not line.startswith("PID "):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
                assert line, "host exited before reporting its worker"
        worker_pid = int(line.split()[1])
        assert not _gone(worker_pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # The worker sees EOF on its channel (and has PR_SET_PDEATHSIG as a backstop).
        try:
            psutil.Process(worker_pid).wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
        assert _gone(worker_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
