"""Per-worker cgroups, tripped for real by examples/plugins/hog on this kernel.

They close what per-process rlimits leave open: memory that is not address space (memfd pages),
a fork bomb as root (RLIMIT_NPROC does not apply to uid 0), and a child that leaves the worker's
process group. Where this host may not create cgroups the tests skip, saying why — cordon never
requires them (see ``test_without_cgroups_the_worker_runs_and_says_why``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import psutil
import pytest

from cordon.runtime import QuotaExceeded, Runtime
from cordon.runtime._supervise._cgroup import THREAD_ALLOWANCE, CgroupSupport
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

HOG = EXAMPLES / "hog"
MiB = 1024 * 1024


def _support() -> CgroupSupport:
    found = CgroupSupport.detect()
    found.close()
    return found


_HERE = _support()
needs_cgroups = pytest.mark.skipif(
    not _HERE.available, reason=f"this host may not create cgroups: {_HERE.why}"
)


async def _until_gone(pids: list[int]) -> None:
    """Wait (bounded) until none of ``pids`` runs. Killed orphans are reparented and may stay
    zombies until their new parent reaps them; a pidfd turns readable at death, not reaping."""
    with anyio.fail_after(5):
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                await anyio.wait_readable(fd)
            finally:
                os.close(fd)


def _config(tmp_path: Path, **defaults: object) -> dict[str, object]:
    config = base_config(tmp_path, **defaults)
    config["plugins"] = {"hog": {"grant": ["log"]}}
    return config


@needs_cgroups
async def test_each_worker_runs_in_its_own_groups_with_the_configured_limits(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with Runtime(_config(tmp_path, memory="96 MiB", processes=2)) as rt:
            hog = await rt.load(HOG)
            pid = await hog.call("pid")
            assert hog.cgroup.startswith("applied")
            groups = rt._cgroups[hog.worker]  # type: ignore[index]
            assert pid in groups.members()
            memory_dir = groups.dirs["memory"]
            limit_file = "memory.max" if groups.version == "v2" else "memory.limit_in_bytes"
            assert int((memory_dir / limit_file).read_text()) == 96 * MiB
            assert int((groups.dirs["pids"] / "pids.max").read_text()) == 2 + 1 + THREAD_ALLOWANCE
            parents = list(rt.cgroups.parents.values())
            assert all(p.exists() for p in parents)
        # Every group, the runtime's parent included, is removed with the runtime.
        assert not any(p.exists() for p in parents)


@needs_cgroups
async def test_the_worker_is_in_its_groups_before_the_first_line_of_plugin_code_runs(
    tmp_path: Path,
) -> None:
    # Sandbox off only so that plugin code may read /proc/self/cgroup.
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path, sandbox="off", memory="96 MiB")) as rt:
            witness = await rt.load(TEST_PLUGINS / "cgroup_witness")
            seen = await witness.call("at_import")
            groups = rt._cgroups[witness.worker]  # type: ignore[index]
            for controller, directory in groups.dirs.items():
                relative = "/" + str(directory.relative_to(rt.cgroups.parents[controller].parent))
                assert any(line.endswith(relative) for line in seen.splitlines()), (
                    controller,
                    seen,
                )


@needs_cgroups
async def test_memory_that_is_not_address_space_is_stopped_by_the_memory_cgroup(
    tmp_path: Path,
) -> None:
    # memfd pages are memory the worker holds without mapping it: RLIMIT_AS (96 MiB) and the
    # RSS watchdog never see them; 8 x 16 MiB stays within file-size and open-files.
    with anyio.fail_after(60):
        async with Runtime(
            _config(tmp_path, memory="96 MiB", file_size="16 MiB", open_files=64)
        ) as rt:
            hog = await rt.load(HOG)
            first = await hog.call("pid")
            worker = hog.worker
            assert worker is not None
            with pytest.raises(QuotaExceeded) as info:
                await hog.call("memfd_hoard", {"files": 8, "size": 16 * MiB})
            assert info.value.kind == "memory"
            assert info.value.limit == 96 * MiB
            assert "OOM killer" in info.value.message
            assert worker.exit is not None
            assert (worker.exit.reason, worker.exit.signal) == ("memory", 9)
            # The next call is served by a fresh worker.
            assert await hog.call("pid") != first


@needs_cgroups
async def test_a_fork_bomb_as_root_stops_at_the_pids_ceiling(tmp_path: Path) -> None:
    # The sandbox refuses fork whatever `processes` says; with the sandbox off the plugin may
    # fork, RLIMIT_NPROC is set but not enforced for uid 0, so the pids cgroup is what stops it.
    with anyio.fail_after(60):
        async with Runtime(_config(tmp_path, processes=2, sandbox="off")) as rt:
            hog = await rt.load(HOG)
            out = await hog.call("fork_and_hold", {"attempts": 200})
            assert out["stopped_by"] == "EAGAIN"
            assert 0 < out["children"] <= 2 + THREAD_ALLOWANCE
            worker = hog.worker
            assert worker is not None
            held = [c.pid for c in psutil.Process(worker.pid).children()]
            assert len(held) == out["children"]
        await _until_gone(held)


@needs_cgroups
async def test_a_child_that_leaves_the_workers_process_group_dies_with_the_worker(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with Runtime(_config(tmp_path, processes=2, sandbox="off")) as rt:
            hog = await rt.load(HOG)
            escaped = await hog.call("escapee")
            worker = hog.worker
            assert worker is not None
            assert psutil.Process(escaped).status() != psutil.STATUS_ZOMBIE
            assert os.getpgid(escaped) != worker.pid
        # Not in the worker's process group, so only the cgroup sweep can have killed it.
        await _until_gone([escaped])


async def test_without_cgroups_the_worker_runs_and_says_why(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config["runtime"] = {**config["runtime"], "cgroups": "off"}  # type: ignore[dict-item]
    with anyio.fail_after(30):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            await hog.call("pid")
            assert hog.cgroup == "unavailable: off (runtime.cgroups)"
            assert not rt.cgroups.available


@needs_cgroups
def test_groups_left_by_a_runtime_that_died_are_swept_when_the_next_one_starts() -> None:
    first = CgroupSupport.detect()
    first.close()
    bases = {p.parent for p in first.parents.values()}
    dead_pid = _pid_of_finished_child()
    ns = os.stat("/proc/self/ns/pid").st_ino
    stale = [b / f"cordon-{ns}-{dead_pid}-abcdef" for b in bases]
    alive = [b / f"cordon-{ns}-{os.getpid()}-fedcba" for b in bases]
    # Another pid namespace's runtime: its pid means nothing here, so never swept; and a
    # name no pid could have must not break the sweep.
    foreign = [b / f"cordon-{ns + 1}-{dead_pid}-abcdef" for b in bases]
    absurd = [b / f"cordon-{ns}-99999999999999999999-abcdef" for b in bases]
    try:
        for group in stale:
            (group / "hello-1").mkdir(parents=True)
        for group in [*alive, *foreign, *absurd]:
            group.mkdir()
        CgroupSupport.detect().close()
        assert not any(g.exists() for g in stale)
        assert all(g.exists() for g in alive)  # its runtime still runs: not ours to touch
        assert all(g.exists() for g in [*foreign, *absurd])
    finally:
        for group in [*stale, *alive, *foreign, *absurd]:
            for child in (group / "hello-1", group):
                if child.exists():
                    child.rmdir()


def _pid_of_finished_child() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
