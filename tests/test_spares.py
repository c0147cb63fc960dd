"""Warm spares: workers started up to their hello before any plugin needs them, so a lazy
first use or a crash restart skips the interpreter start (measured in benchmarks/, not here).
A claimed spare must be indistinguishable from a freshly spawned worker: the plugin's own
limits, sandbox, cgroup and scratch dir."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from cordon.runtime import QuotaExceeded, Runtime, WorkerCrashed
from cordon.runtime._supervise._worker import WorkerProcess
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config
from tests.test_cgroups import needs_cgroups

pytestmark = pytest.mark.anyio

HOG = EXAMPLES / "hog"
PROBE = TEST_PLUGINS / "probe"


def _config(tmp_path: Path, warm: int = 1, **defaults: Any) -> dict[str, Any]:
    config = base_config(tmp_path, **defaults)
    config["runtime"] = {**config["runtime"], "warm-workers": warm}  # type: ignore[dict-item]
    return config


async def _a_spare(rt: Runtime) -> WorkerProcess:
    """Wait (bounded by the caller) until a spare is ready to be claimed."""
    if not rt._spares:
        await rt._spare_added.wait()
    return rt._spares[-1]


async def test_a_runtime_that_runs_no_plugin_starts_no_spare(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with Runtime(_config(tmp_path)) as rt:
            await rt.load(PROBE)
            assert rt._spares == []
            assert not psutil.Process().children()


async def test_the_next_start_claims_the_waiting_spare_and_a_new_one_takes_its_place(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            first = await probe.call("pid")
            spare = await _a_spare(rt)
            assert spare.spare and spare.pid != first
            await probe.stop()
            # The next start is the spare itself, not a new process.
            assert await probe.call("pid") == spare.pid
            assert probe.worker is spare
            assert spare.plugin_id == "probe"  # claimed: no longer a spare
            replacement = await _a_spare(rt)
            assert replacement is not spare
        # The unclaimed spare ended with the runtime (and was reaped: no pid left).
        assert replacement.exit is not None
        assert not psutil.pid_exists(replacement.pid or 0)


async def test_a_claimed_spare_runs_with_the_plugins_own_limits_sandbox_and_scratch_dir(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path, memory="96 MiB")) as rt:
            probe = await rt.load(PROBE)
            hog = await rt.load(HOG)
            await probe.call("pid")  # the first start makes the first spare
            spare = await _a_spare(rt)
            assert await hog.call("pid") == spare.pid
            assert hog.sandbox == probe.sandbox  # every layer, as for a fresh spawn
            scratch = rt.state_dir / "scratch" / "hog"  # type: ignore[operator]
            assert psutil.Process(spare.pid).cwd() == str(scratch)
            assert os.path.realpath(f"/proc/{spare.pid}/cwd") == str(scratch)
            with pytest.raises(QuotaExceeded) as info:
                await hog.call("memory_bomb")
            assert (info.value.kind, info.value.limit) == ("memory", 96 * 1024 * 1024)


@needs_cgroups
async def test_a_claimed_spare_gets_the_plugins_cgroup_limits_and_its_oom_is_a_memory_quota(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, memory="96 MiB", file_size="16 MiB", open_files=64)
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            probe = await rt.load(PROBE)
            hog = await rt.load(HOG)
            await probe.call("pid")
            spare = await _a_spare(rt)
            assert await hog.call("pid") == spare.pid
            assert hog.cgroup.startswith("applied") and "96 MiB" in hog.cgroup
            group = rt._cgroups[spare]
            limit_file = "memory.max" if group.version == "v2" else "memory.limit_in_bytes"
            assert int((group.dirs["memory"] / limit_file).read_text()) == 96 * 1024 * 1024
            assert spare.pid in group.members()
            # memfd pages: past RLIMIT_AS's sight, stopped by the (spare's, now hog's) group.
            with pytest.raises(QuotaExceeded) as info:
                await hog.call("memfd_hoard", {"files": 8, "size": 16 * 1024 * 1024})
            assert info.value.kind == "memory" and "OOM killer" in info.value.message


async def test_a_spare_that_dies_while_waiting_is_never_handed_out(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            await probe.call("pid")
            spare = await _a_spare(rt)
            os.kill(spare.pid or 0, signal.SIGKILL)
            await spare.exited.wait()
            await probe.stop()
            fresh = await probe.call("pid")
            assert fresh != spare.pid
            assert probe.stats().restarts == 1


async def test_a_crash_restart_is_served_by_a_spare(tmp_path: Path) -> None:
    config = _config(tmp_path, restart={"backoff": "0.01 s"})
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            await hog.call("pid")
            spare = await _a_spare(rt)
            restarted = anyio.Event()

            async def on_started(topic: str, payload: Any, source: str) -> None:
                if payload["pid"] == spare.pid:
                    restarted.set()

            assert rt.events is not None
            rt.events.subscribe("test", "cordon.plugin.started", on_started)
            with pytest.raises(WorkerCrashed):
                await hog.call("crash")
            # Eager restart, no call: supervision alone starts the plugin again, on the spare.
            await restarted.wait()
            assert hog.worker is spare


async def test_with_warm_workers_0_no_spare_is_ever_started(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with Runtime(_config(tmp_path, warm=0)) as rt:
            probe = await rt.load(PROBE)
            pid = await probe.call("pid")
            await probe.stop()
            await probe.call("pid")
            assert rt._spares == []
            assert [c.pid for c in psutil.Process().children()] != [pid]


async def test_a_spare_killed_just_before_its_claim_costs_the_plugin_nothing(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path)) as rt:
            probe = await rt.load(PROBE)
            await probe.call("pid")
            spare = await _a_spare(rt)
            await probe.stop()
            # Not yet reaped (maybe not even dead) when the call claims it.
            os.kill(spare.pid or 0, signal.SIGKILL)
            assert await probe.call("pid") != spare.pid
            stats = probe.stats()
            assert (stats.state, stats.last_exit_reason, stats.crashes) == ("active", None, 0)
