"""What an idle worker holds, as structure rather than byte counts (those are measured by
benchmarks/bench_worker_memory.py): an idle worker runs one thread, forked or spawned, and
the zygote takes the holes of its small-object pools before it forks, so a child's first
objects go to fresh pools instead of copying the pages it shares with the zygote."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from cordon.runtime import Runtime
from tests.conftest import base_config

pytestmark = pytest.mark.anyio

#: A worker's start and a few calls; generous for a loaded 2-CPU machine.
DEADLINE = 60.0


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.mark.parametrize("launcher", ["zygote", "spawn"])
async def test_an_idle_worker_runs_one_thread_after_async_calls_forked_or_spawned(
    tmp_path: Path, hello_dir: Path, launcher: str
) -> None:
    """A thread's stack and state are the worker's own pages: nothing of the worker (the
    loop, logging, the channel) may run one while it waits. The sync pool is started by
    the first plain ``def`` call only; that it then holds threads is the control."""
    config = base_config(tmp_path, sandbox="strict")
    config["runtime"] = {**config["runtime"], "launcher": launcher}  # type: ignore[dict-item]
    with anyio.fail_after(DEADLINE):
        async with Runtime(config) as rt:
            hello = await rt.load(hello_dir)
            for _ in range(3):
                assert await hello.call("greet", {"name": "x"}) == "Hello x"
            await hello.call("slow_count", {"n": 2, "delay": 0})  # timers, progress
            assert hello.worker is not None and hello.worker.process is not None
            assert hello.worker.process.launcher == launcher
            pid = hello.worker.process.pid
            assert _threads(pid) == 1
            assert await hello.call("shout", {"text": "x"}) == "X"
            assert _threads(pid) == 2


#: Objects of every small size made in an interpreter that has the zygote's imports: how
#: many 4 KiB pages each size's objects span, with the zygote's fill_pools run before or not.
SPANS = textwrap.dedent(
    """
    import gc, sys
    from cordon.worker import _zygote  # the zygote's imports, and fill_pools
    gc.collect()
    if sys.argv[1] == "fill":
        _zygote.fill_pools()
    gc.freeze()
    spans = {}
    for n in range(16, 480, 16):
        objs = [bytes(n) for _ in range(PER_SIZE)]
        spans[n] = len({id(o) >> 12 for o in objs})
    print(spans)
    """
)
PER_SIZE = 32


def _spans(mode: str) -> dict[int, int]:
    out = subprocess.run(
        [sys.executable, "-I", "-c", SPANS.replace("PER_SIZE", str(PER_SIZE)), mode],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    ).stdout
    spans: dict[int, int] = ast.literal_eval(out)
    return spans


def _packed(n: int) -> int:
    """Pages that PER_SIZE objects of ``bytes(n)`` span side by side: their pymalloc size
    class (header + n + 1, to 16 bytes), one page more for where the run starts in a page
    and one for a pool's header or a pool boundary on the way."""
    size = -(-(33 + n) // 16) * 16
    return -(-(PER_SIZE * size) // 4096) + 2


def test_a_forks_new_objects_fill_fresh_pools_not_the_holes_between_the_zygotes() -> None:
    """Each object a child puts in a hole between the zygote's objects copies a page it
    shared with the zygote. With fill_pools run (as the zygote does before it serves), new
    objects of every size lie side by side; without it (the control), they scatter."""
    filled, control = _spans("fill"), _spans("none")
    assert all(filled[n] <= _packed(n) for n in filled), filled
    assert sum(control.values()) > sum(filled.values()) * 1.3, (control, filled)
