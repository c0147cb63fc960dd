"""Red team, the zygote launcher: a hostile plugin in a forked worker reaches for the zygote,
the host and another plugin's worker (all the same uid) through every syscall that names a
pid, raw (ctypes, past any Python-level wrapper), and tries every way to make a process of
its own (a child the host's kill could miss, or one reparented next to the zygote).

Each refusal is checked against a control: the same probe on the worker's own pid under the
sandbox, and the same probes on another process with the sandbox off, so a probe that could
not have worked anyway proves nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import Runtime
from cordon.runtime._supervise._launcher import zygote_unsupported
from cordon.runtime._supervise._zygote import ZygoteLauncher
from tests.conftest import TEST_PLUGINS, base_config

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(zygote_unsupported() is not None, reason=str(zygote_unsupported())),
]

PROBER = Path(__file__).resolve().parent / "sandbox" / "hostile" / "pid_prober"
WITNESS = TEST_PLUGINS / "fork_witness"
#: Mappings larger than this are address-space reservations, not memory (skipped).
MAX_REGION = 1 << 30
#: Plugins forked before the heap scan, whose names it must not find.
EARLIER = ("fork_witness", "probe", "greet_twin", "mw_a")
#: Each test's whole budget (two runtimes, three workers): a hang fails, never stalls.
DEADLINE = 60.0
#: Probes the kernel lets a worker make on itself under the sandbox: the controls showing the
#: refusals below are about the target, not a probe that is broken.
ON_ITSELF = ("kill", "tgkill", "pidfd_open", "getpgid", "getsid", "sched_getparam", "prlimit64")
#: Probes that work on another process of the same uid when nothing is sandboxed.
UNSANDBOXED = (
    *("kill", "tgkill", "pidfd_open", "getpgid", "sched_getparam", "prlimit64"),
    *("proc_status", "proc_environ", "proc_cmdline", "proc_dir"),
)


def _config(tmp_path: Path, sandbox: str) -> dict[str, Any]:
    config = base_config(tmp_path, sandbox=sandbox)
    config["runtime"] = {**config["runtime"], "launcher": "zygote"}  # type: ignore[dict-item]
    return config


def _memory_holding(pid: int, needles: list[str]) -> dict[str, str]:
    """Which ``needles`` are anywhere in process ``pid``'s readable memory, and where."""
    found: dict[str, str] = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            low, high = (int(x, 16) for x in span.split("-"))
            if "r" not in perms or high - low > MAX_REGION:
                continue
            try:
                mem.seek(low)
                data = mem.read(high - low)
            except OSError:
                continue  # [vvar] and the like
            found.update({n: line.strip() for n in needles if n.encode() in data})
    return found


def _zygote_pid(rt: Runtime) -> int:
    assert isinstance(rt.launcher, ZygoteLauncher)
    assert rt.launcher.pid is not None
    return rt.launcher.pid


async def test_a_forked_worker_names_no_other_process_by_any_syscall_that_takes_a_pid(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path / "strict", "strict")) as rt:
            prober = await rt.load(PROBER)
            sibling = await rt.load(WITNESS)
            own = await prober.call("pid")
            sibling_pid = (await sibling.call("ids"))["pid"]
            targets = {"zygote": _zygote_pid(rt), "host": os.getpid(), "sibling": sibling_pid}
            locked = {who: await prober.call("reach", {"pid": pid}) for who, pid in targets.items()}
            itself = await prober.call("reach", {"pid": own})
            assert prober.worker is not None and prober.worker.process is not None
            assert prober.worker.process.launcher == "zygote"
        async with Runtime(_config(tmp_path / "off", "off")) as rt:
            prober = await rt.load(PROBER)
            sibling = await rt.load(WITNESS)
            control = await prober.call("reach", {"pid": (await sibling.call("ids"))["pid"]})
    for who, results in locked.items():
        through = {probe: r for probe, r in results.items() if r == "ok"}
        assert not through, f"a forked worker reached the {who} by {through}"
    assert {p: itself[p] for p in ON_ITSELF} == dict.fromkeys(ON_ITSELF, "ok"), itself
    assert {p: control[p] for p in UNSANDBOXED} == dict.fromkeys(UNSANDBOXED, "ok"), control


async def test_a_forked_worker_makes_no_process_by_any_fork_or_clone_only_threads(
    tmp_path: Path,
) -> None:
    """``CLONE_PARENT`` included: a child of the worker's parent would be the host's, outside
    the worker's session and process group, which the host's stop signals."""
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, "strict")) as rt:
            prober = await rt.load(PROBER)
            made = await prober.call("make_process")
            # The worker is still the one it was: no child took over its pipes.
            assert await prober.call("pid") == prober.worker.process.pid  # type: ignore[union-attr]
    assert made["thread"] == "ok"
    # clone3's flags are in memory BPF cannot read: ENOSYS, so glibc falls back to clone.
    assert made.pop("clone3") == "ENOSYS"
    assert made == {
        "os.fork": "EPERM",
        "fork": "EPERM",
        "clone": "EPERM",
        "clone_parent": "EPERM",
        "thread": "ok",
    }


async def test_a_forked_worker_finds_no_earlier_plugins_scratch_path_in_what_it_inherited(
    tmp_path: Path,
) -> None:
    """The zygote decodes every fork request (a worker's env: its scratch dir, named after
    its plugin). A worker forked after another plugin's scans the heap it got from the
    zygote (the kernel copies each page, so an unmapped one is an error, not a crash); the
    only plugin it finds named there is itself, which shows the scan reads what is there."""
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, "strict")) as rt:
            # Ids of different lengths: the requests' text lands in blocks of different
            # sizes, so a later request does not merely overwrite an earlier one's.
            for earlier in EARLIER:
                await (await rt.load(TEST_PLUGINS / earlier)).start()
            prober = await rt.load(PROBER)
            names = await prober.call("scratch_names", timeout=30)
            assert prober.worker is not None and prober.worker.process is not None
            # The whole of it, read from the host (the worker is its child): what the
            # plugin's scan could reach wherever the allocator happened to put it.
            held = _memory_holding(prober.worker.process.pid, [f"scratch/{p}" for p in EARLIER])
    assert names == ["pid_prober"]
    assert held == {}, f"a forked worker holds other plugins' paths: {held}"


@pytest.mark.skipif(os.geteuid() != 0, reason="the zygote is not dumpable: only root reads it")
async def test_the_zygote_is_never_handed_a_plugins_name_so_no_fork_can_inherit_one(
    tmp_path: Path,
) -> None:
    """The class behind the heap scan above: whatever the zygote holds, every later fork
    inherits. A fork request carries only what is the same for every worker (a spare's
    start dir; the worker moves into its own scratch dir at initialize), so no plugin's
    name or path is ever in the zygote's memory to be found, wiped or not."""
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, "strict")) as rt:
            handles = [await rt.load(TEST_PLUGINS / earlier) for earlier in EARLIER]
            cwds = {}
            for handle in handles:
                await handle.start()
                assert handle.worker is not None and handle.worker.pid is not None
                cwds[handle.id] = os.readlink(f"/proc/{handle.worker.pid}/cwd")
            held = _memory_holding(_zygote_pid(rt), [f"scratch/{h.id}" for h in handles])
    # The control: each worker runs in its own scratch dir all the same, named as searched.
    assert all(cwd.endswith(f"scratch/{p}") for p, cwd in cwds.items()), cwds
    assert held == {}, f"the zygote holds plugins' paths: {held}"


async def test_a_forked_worker_shares_no_writable_memory_with_the_zygote_or_a_sibling(
    tmp_path: Path,
) -> None:
    """Copy-on-write keeps a worker's writes its own; a writable *shared* mapping inherited
    from the template would be a channel between plugins (or into the zygote). Read from
    the workers (the host's children): the zygote is not dumpable, so its maps are root's,
    and whatever it maps shared its forks inherit."""
    with anyio.fail_after(DEADLINE):
        async with Runtime(_config(tmp_path, "strict")) as rt:
            prober = await rt.load(PROBER)
            sibling = await rt.load(WITNESS)
            pids = [await prober.call("pid"), (await sibling.call("ids"))["pid"]]
            shared = {pid: _shared_writable(pid) for pid in pids}
    assert shared == {pid: [] for pid in pids}


def _shared_writable(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return [line.strip() for line in maps if line.split()[1][1::2] == "ws"]
