"""The loop shortcuts (host and worker ``_loopfast``) and their public-API fallback.

``CORDON_LOOP_SHORTCUTS=0`` must really put both sides on the public path (each says which
path it chose), a loop without the internals the shortcuts read must get the public path
whatever the switch says, and calls, cancellation and crashes must work on that path too:
the call, cancellation and crash tests are run again here with the switch off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anyio
import pytest

from cordon.runtime import Runtime
from cordon.runtime._supervise import _loopfast as host_loopfast
from cordon.worker import _loopfast as worker_loopfast
from tests.conftest import TEST_PLUGINS
from tests.test_calls import (
    test_a_plugin_exception_arrives_typed_and_the_worker_lives_on as _t_plugin_exception,
)
from tests.test_calls import (
    test_an_awaiting_call_does_not_block_other_calls as _t_awaiting,
)
from tests.test_calls import (
    test_many_concurrent_calls_all_get_their_own_answer as _t_many,
)
from tests.test_calls import (
    test_progress_notifications_reach_the_caller as _t_progress,
)
from tests.test_cancellation import (
    test_a_cancelled_caller_cancels_the_plugin_task as _t_cancelled_caller,
)
from tests.test_cancellation import (
    test_a_cooperative_call_that_times_out_leaves_the_worker_running as _t_timeout,
)
from tests.test_crashes import (
    test_a_call_that_ignores_cancellation_times_out_and_the_worker_is_replaced as _t_ignores,
)
from tests.test_crashes import (
    test_a_dying_worker_fails_every_in_flight_call_with_the_reason as _t_dying,
)
from tests.test_perf_paths import (
    test_a_caller_resumed_from_its_answers_read_is_still_its_own_task as _t_own_task,
)
from tests.test_perf_paths import (
    test_an_idle_worker_still_runs_what_a_signal_or_a_thread_hands_its_loop as _t_idle_wakers,
)

pytestmark = pytest.mark.anyio

LOOPPATH = TEST_PLUGINS / "looppath"


@pytest.fixture(autouse=True)
def public_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``test_public_*``: the switch off, for the host and the workers it starts. (By name:
    the re-run tests are the originals' function objects, so a mark would mark those.)"""
    if request.node.name.startswith("test_public_"):
        monkeypatch.setenv(host_loopfast.ENV, "0")
    else:
        monkeypatch.delenv(host_loopfast.ENV, raising=False)


async def _paths(rt: Runtime) -> tuple[str, str]:
    """(the host reader's path, the worker's own report of its path)."""
    plugin = await rt.load(LOOPPATH)
    worker_says = await plugin.call("loop_path")
    assert plugin.worker is not None
    return plugin.worker.loop_path, worker_says


async def test_both_sides_take_the_shortcuts_by_default(rt: Runtime) -> None:
    with anyio.fail_after(30):
        assert await _paths(rt) == ("shortcuts", "shortcuts")


async def test_public_the_switch_puts_both_sides_on_the_public_api(rt: Runtime) -> None:
    with anyio.fail_after(30):
        assert await _paths(rt) == ("public", "public")
        plugin = rt.get("looppath")
        assert plugin.worker is not None
        assert plugin.worker._step_now is None  # the host's reader has nothing to call


@pytest.fixture
def loop_without_internals() -> Iterator[asyncio.AbstractEventLoop]:
    """A selector loop whose ready queue is not the deque the shortcuts expect (as on a
    loop implementation of another shape, or a future asyncio)."""
    loop = asyncio.new_event_loop()
    real = loop._ready  # type: ignore[attr-defined]
    loop._ready = list(real)  # type: ignore[attr-defined]
    try:
        yield loop
    finally:
        loop._ready = real  # type: ignore[attr-defined]
        loop.close()


def test_a_loop_without_the_expected_internals_gets_the_public_path_on_both_sides(
    loop_without_internals: asyncio.AbstractEventLoop,
) -> None:
    assert host_loopfast.LoopFast(loop_without_internals).path == "public"
    assert worker_loopfast.LoopFast(loop_without_internals, 0).path == "public"
    normal = asyncio.new_event_loop()
    try:  # the control: the same check passes on a stock loop
        assert host_loopfast.LoopFast(normal).path == "shortcuts"
        assert worker_loopfast.LoopFast(normal, 0).path == "shortcuts"
    finally:
        normal.close()


def test_the_public_worker_path_never_waits_outside_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(worker_loopfast.ENV, "0")
    loop = asyncio.new_event_loop()
    try:
        fast = worker_loopfast.LoopFast(loop, 0)
        assert fast.path == "public"
        assert fast.idle_poll() is False  # returns at once: nothing polled
    finally:
        loop.close()


# Calls, cancellation, crashes and the idle worker's wake-ups, again on the public path.
test_public_plugin_exception = _t_plugin_exception
test_public_awaiting = _t_awaiting
test_public_many = _t_many
test_public_progress = _t_progress
test_public_cancelled_caller = _t_cancelled_caller
test_public_timeout = _t_timeout
test_public_ignores_cancellation = _t_ignores
test_public_dying = _t_dying
test_public_own_task = _t_own_task
test_public_idle_wakers = _t_idle_wakers


async def test_public_large_results_arrive_whole(rt: Runtime) -> None:
    with anyio.fail_after(60):
        plugin = await rt.load(LOOPPATH)
        # 8k objects (~400 KB, ~96k JSON values: within the default max-frame-values).
        got = await plugin.call("objects", {"n": 8_000})
        assert got[-1] == {"i": 7_999, "s": "yy", "f": 3999.5, "l": [7_999, None, True]}
        assert len(await plugin.call("text", {"size": 2_000_000})) == 1_000_000
