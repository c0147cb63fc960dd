"""Cancellation crosses the process boundary: the caller's cancel reaches the plugin's task."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from cordon.runtime import CallTimeout, Runtime

pytestmark = pytest.mark.anyio


async def test_a_cancelled_caller_cancels_the_plugin_task(rt: Runtime, probe_dir: Path) -> None:
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        in_flight = anyio.Event()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: probe.call(
                        "hold", {"gate": "c1"}, on_progress=lambda _: in_flight.set()
                    )
                )
                await in_flight.wait()
                scope.cancel()
        # The $/cancel notification was sent before this request on the same ordered
        # channel, so the worker has cancelled the task by the time it answers.
        events = await probe.call("events")
        assert "hold:c1:cancelled" in events
        assert "hold:c1:released" not in events


async def test_a_cooperative_call_that_times_out_leaves_the_worker_running(
    rt: Runtime, probe_dir: Path
) -> None:
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        pid = await probe.call("pid")
        with pytest.raises(CallTimeout) as info:
            await probe.call("hold", {"gate": "t1"}, timeout=0.2)
        assert (info.value.timeout, info.value.method) == (0.2, "hold")
        assert "hold:t1:cancelled" in await probe.call("events")
        assert await probe.call("pid") == pid


async def test_a_timeout_above_the_operator_maximum_is_refused(
    rt: Runtime, probe_dir: Path
) -> None:
    from cordon.runtime import InvalidParams

    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        with pytest.raises(InvalidParams) as info:
            await probe.call("pid", timeout=3600)
        assert info.value.field == "timeout"
