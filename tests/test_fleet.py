"""Many plugins on one host: worker starts take turns (the first plugins answer while the
rest still start, a plugin slow to import holds back nobody), and the host's own limits
allow a fleet."""

from __future__ import annotations

import itertools
import resource
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest

from cordon.runtime import PluginHandle, Runtime
from cordon.runtime._core import _workers
from cordon.runtime._core._workers import START_CONCURRENCY
from cordon.runtime._supervise._worker_life import INITIALIZE_TIMEOUT
from tests.conftest import TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

GATED = TEST_PLUGINS / "gated"
#: Every wait in these tests is bounded by this.
DEADLINE = 90
#: The fast plugins must answer well within the time a start may take (INITIALIZE_TIMEOUT):
#: if slow imports held every turn until then, this deadline fails first.
FAST_DEADLINE = INITIALIZE_TIMEOUT * 2 / 3
#: Poll step for a state the runtime changes in its own tasks.
POLL = 0.005


def _copies(root: Path, prefix: str, n: int, *, gate_open: bool) -> list[Path]:
    """``n`` copies of the gated plugin, ids ``<prefix>-<i>``, their gates open or shut."""
    dirs = []
    for i in range(n):
        d = root / f"{prefix}-{i}"
        shutil.copytree(GATED, d, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = d / "plugin.toml"
        manifest.write_text(manifest.read_text().replace('id = "gated"', f'id = "{prefix}-{i}"'))
        if gate_open:
            (d / "gate").touch()
        dirs.append(d)
    return dirs


async def test_plugins_slow_to_import_do_not_hold_back_calls_to_the_others(
    tmp_path: Path,
) -> None:
    # More slow plugins than there are turns: without the turn's lease, every turn would be
    # held by a slow import and the fast plugins would wait for one to give up.
    slow_dirs = _copies(tmp_path, "slow", START_CONCURRENCY + 1, gate_open=False)
    fast_dirs = _copies(tmp_path, "fast", 3, gate_open=True)
    answers: dict[str, str] = {}
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            slow = [await rt.load(d) for d in slow_dirs]
            fast = [await rt.load(d) for d in fast_dirs]

            async def greet(handle: PluginHandle) -> None:
                answers[handle.id] = await handle.call("greet", {"name": handle.id}, timeout=60)

            async with anyio.create_task_group() as tg:
                for handle in slow:
                    tg.start_soon(greet, handle)
                # Every turn is taken by a slow start before the fast ones ask.
                await _until(lambda: rt._start_slots.value == 0)
                with anyio.fail_after(FAST_DEADLINE):
                    async with anyio.create_task_group() as fast_tg:
                        for handle in fast:
                            fast_tg.start_soon(greet, handle)
                assert sorted(answers) == sorted(h.id for h in fast)
                assert all(h.state == "loading" for h in slow), [h.state for h in slow]
                for d in slow_dirs:
                    (d / "gate").touch()
            assert sorted(answers) == sorted(h.id for h in [*slow, *fast])
            assert all(answers[h.id] == f"Hello {h.id}" for h in slow)
            # Every turn came back exactly once: a start whose lease ran out did not give its
            # turn back a second time when it ended (that would allow more starts at once).
            assert rt._start_slots.value == START_CONCURRENCY


async def test_the_first_of_a_batch_answers_while_the_rest_wait_their_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first plugin imports at once; the others' imports wait on their gates, and no turn
    # is given up early: what is spawned when the first answers is exactly what the turns
    # allow, however slow the machine.
    monkeypatch.setattr(_workers, "START_SLOT_LEASE", DEADLINE * 10)
    n = 3 * START_CONCURRENCY
    first = _copies(tmp_path, "first", 1, gate_open=True)
    rest = _copies(tmp_path, "rest", n - 1, gate_open=False)
    spawned_at_first_answer: list[int] = []
    me = psutil.Process()
    with anyio.fail_after(DEADLINE):
        async with Runtime(base_config(tmp_path)) as rt:
            handles = [await rt.load(d) for d in [*first, *rest]]

            async def greet(handle: PluginHandle) -> None:
                await handle.call("greet", {"name": "x"}, timeout=60)

            async with anyio.create_task_group() as tg:
                for handle in handles:
                    tg.start_soon(greet, handle)
                with anyio.fail_after(FAST_DEADLINE):
                    await _until(lambda: handles[0].state == "active")
                # Every worker is this process's child (a zygote's too: CLONE_PARENT); the
                # zygote itself is not a worker.
                zygote = getattr(rt.launcher, "pid", None)

                def workers() -> int:
                    return sum(1 for c in me.children() if c.pid != zygote)

                spawned_at_first_answer.append(workers())
                # Starts are forked one at a time: on a loaded machine the first can answer
                # before every turn's worker exists. Once every turn is taken (and the gates
                # keep them taken) no further worker may start.
                with anyio.fail_after(FAST_DEADLINE):
                    await _until(
                        lambda: rt._start_slots.value == 0 and workers() > START_CONCURRENCY
                    )
                spawned_with_every_turn_taken = workers()
                for d in rest:
                    (d / "gate").touch()
            assert all(h.state == "active" for h in handles)
    # The rest of the batch waited: never more than the turns, plus the one the first passed
    # on once initialized (before it answered); with every turn taken, exactly that.
    assert 1 <= spawned_at_first_answer[0] <= START_CONCURRENCY + 1, spawned_at_first_answer
    assert spawned_with_every_turn_taken == START_CONCURRENCY + 1


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll a state the runtime updates in its own tasks (callers bound it by fail_after)."""
    for _ in itertools.count():
        if predicate():
            return
        await anyio.sleep(POLL)


async def test_load_all_registers_every_eager_plugin_before_their_starts_end(
    tmp_path: Path,
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    slow_dirs = _copies(plugins, "slow", 2, gate_open=False)
    fast_dirs = _copies(plugins, "fast", 1, gate_open=True)
    config = base_config(tmp_path, activate="eager")
    runtime = config["runtime"]
    assert isinstance(runtime, dict)
    runtime["plugin-dirs"] = [str(plugins)]
    ids = sorted(d.name for d in [*slow_dirs, *fast_dirs])
    with anyio.fail_after(DEADLINE):
        async with Runtime(config) as rt, anyio.create_task_group() as tg:
            reports = []

            async def load_all() -> None:
                reports.append(await rt.load_all(entry_points=False))

            tg.start_soon(load_all)
            # Registered at once, slow imports and all: the fast plugin is callable while
            # load_all still waits for the slow ones' starts.
            with anyio.fail_after(FAST_DEADLINE):
                await _until(lambda: sorted(rt.plugins) == ids)
                assert await rt.call("fast-0", "greet", {"name": "Ada"}) == "Hello Ada"
            assert not reports and rt.get("slow-0").state == "loading"
            for d in slow_dirs:
                (d / "gate").touch()
        assert reports[0].ok and sorted(reports[0].loaded) == ids


async def test_a_runtime_raises_its_soft_open_files_limit_to_the_hard_limit(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        with anyio.fail_after(DEADLINE):
            async with Runtime(base_config(tmp_path)):
                assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
