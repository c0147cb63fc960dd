"""The loop shortcuts read asyncio's private internals, which change between Python versions.

Each side chooses its path by feature detection (``LoopFast.path``); tests/test_loopfast.py
checks that a loop without those internals gets the public path. These check the other way
round, on whichever Python runs the suite (3.11, 3.12, 3.13): where the detection says
``shortcuts``, the shortcut really runs the step at once, so a version whose internals still
look right but behave differently (a task step handle without the task as ``__self__``, a
``set_result`` that queues elsewhere) fails here rather than silently costing a loop pass per
call. Each has a control: the public path leaves the step to the loop's next pass.
"""

from __future__ import annotations

import asyncio

import pytest

from cordon.runtime._supervise import _loopfast as host_loopfast
from cordon.worker import _loopfast as worker_loopfast

#: The timer that stands in for the channel's read callback: fires once the loop is idle.
_READ_AFTER = 0.001
#: Every run_until_complete below ends well before this.
_DEADLINE = 5.0


def _worker_step_ran_at_once(loop: asyncio.AbstractEventLoop) -> bool:
    """A new task made in a read callback: did ``step_now`` run its first step before the
    callback returned?"""
    fast = worker_loopfast.LoopFast(loop, 0)
    seen: dict[str, bool] = {"ran": False}

    async def tool() -> None:
        seen["ran"] = True

    def read_callback() -> None:
        task = loop.create_task(tool())
        fast.step_now(task)
        seen["at_once"] = seen["ran"]

    loop.call_later(_READ_AFTER, read_callback)
    loop.run_until_complete(asyncio.wait_for(asyncio.sleep(_READ_AFTER * 20), _DEADLINE))
    assert seen["ran"]  # the step ran either way: at once, or on the loop's next pass
    return seen["at_once"]


def _host_caller_resumed_at_once(loop: asyncio.AbstractEventLoop) -> bool:
    """A caller awaiting its answer's future, resolved in a read callback: did ``step_now``
    resume the caller before the callback returned?"""
    fast = host_loopfast.LoopFast(loop)
    seen: dict[str, bool] = {"resumed": False}

    async def caller(fut: asyncio.Future[int]) -> None:
        await fut
        seen["resumed"] = True

    def read_callback(fut: asyncio.Future[int]) -> None:
        fut.set_result(1)
        fast.step_now(fut)
        seen["at_once"] = seen["resumed"]

    async def main() -> None:
        fut = loop.create_future()
        waiting = loop.create_task(caller(fut))
        loop.call_later(_READ_AFTER, read_callback, fut)
        await asyncio.wait_for(waiting, _DEADLINE)

    loop.run_until_complete(main())
    assert seen["resumed"]
    return seen["at_once"]


@pytest.mark.parametrize("side", ["worker", "host"])
def test_where_a_side_detects_the_shortcuts_they_run_the_step_at_once_on_this_python(
    side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(host_loopfast.ENV, raising=False)
    probe = _worker_step_ran_at_once if side == "worker" else _host_caller_resumed_at_once
    loop = asyncio.new_event_loop()
    try:
        if side == "worker":
            assert worker_loopfast.LoopFast(loop, 0).path == "shortcuts"
        else:
            assert host_loopfast.LoopFast(loop).path == "shortcuts"
        assert probe(loop) is True
    finally:
        loop.close()


@pytest.mark.parametrize("side", ["worker", "host"])
def test_on_the_public_path_the_step_waits_for_the_loops_next_pass(
    side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: with the switch off the same probe sees the step run later, so the test
    above can tell a shortcut that fires from one that does nothing."""
    monkeypatch.setenv(host_loopfast.ENV, "0")
    probe = _worker_step_ran_at_once if side == "worker" else _host_caller_resumed_at_once
    loop = asyncio.new_event_loop()
    try:
        assert probe(loop) is False
    finally:
        loop.close()
