"""Supervision: restart backoff, the circuit breaker (open, reset, window), health pings,
calls queued during backoff, and the structured lifecycle events — with tiny windows."""

from __future__ import annotations

import itertools
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from cordon.runtime import PluginHandle, PluginUnavailable, QuotaExceeded, Runtime, WorkerCrashed
from cordon.runtime._supervise._lifecycle import restart_backoff
from tests.conftest import EXAMPLES, base_config

pytestmark = pytest.mark.anyio

HOG = EXAMPLES / "hog"


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll a state the runtime updates in its own tasks (callers bound it by fail_after)."""
    for _ in itertools.count():
        if predicate():
            return
        await anyio.sleep(0.005)


async def _crash(hog: PluginHandle) -> None:
    """Start a worker, crash it, and wait until supervision has recorded the exit."""
    await hog.call("ok")
    before = hog.stats().crashes
    with pytest.raises(WorkerCrashed):
        await hog.call("crash")
    await _until(lambda: hog.stats().crashes > before)


def test_backoff_doubles_per_failure_up_to_the_cap_with_equal_jitter() -> None:
    def highest(a: float, b: float) -> float:
        return b

    def lowest(a: float, b: float) -> float:
        return a

    bases = [restart_backoff(n, 0.2, 1.0, uniform=highest) for n in range(1, 7)]
    assert bases == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    floors = [restart_backoff(n, 0.2, 1.0, uniform=lowest) for n in range(1, 7)]
    assert floors == pytest.approx([b / 2 for b in bases])
    rng = random.Random(7)
    samples = [restart_backoff(3, 0.2, 1.0, uniform=rng.uniform) for _ in range(200)]
    assert all(0.4 <= s <= 0.8 for s in samples)
    assert len(set(samples)) > 100  # jittered, not constant


async def test_a_crashed_worker_is_restarted_after_its_backoff_without_waiting_for_a_call(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path, restart={"backoff": "0.05 s"})
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            first = await hog.call("pid")
            with capture_logs() as logs:
                await _crash(hog)
                # No call: supervision alone brings it back.
                await _until(lambda: hog.state == "active")
            worker = hog.worker
            assert worker is not None and worker.pid != first
            assert hog.stats().restarts == 1
            events = [e["event"] for e in logs if e.get("plugin") == "hog"]
            assert events.index("worker.crashed") < events.index("worker.restarted")
            # The call that comes next is served by that worker, not by yet another one.
            assert await hog.call("pid") == worker.pid


async def test_with_eager_restart_off_a_crashed_worker_waits_for_the_next_call(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path, restart={"backoff": "0.01 s", "eager": False})
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            first = await hog.call("pid")
            await _crash(hog)
            # The restart would have been scheduled as the exit was recorded, not later.
            assert (hog.state, hog.worker) == ("crashed", None)
            assert await hog.call("pid") != first
            assert hog.stats().restarts == 1


async def test_disabling_a_plugin_cancels_its_pending_restart(tmp_path: Path) -> None:
    config = base_config(tmp_path, restart={"backoff": "20 s", "max-backoff": "30 s"})
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            await _crash(hog)
            await _until(lambda: hog.state == "backoff")
            await rt.disable("hog")
            assert (hog.state, hog.worker) == ("disabled", None)
            await rt.enable("hog")
            # Enabled again, it starts on the next call; the cancelled restart left nothing.
            assert await hog.call("ok") == "ok"
            assert hog.stats().restarts == 1


async def test_the_breaker_opens_after_more_than_max_restarts_and_reset_closes_it(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path, restart={"max": 2, "within": "30 s", "backoff": "0.01 s"})
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            with capture_logs() as logs:
                for _ in range(3):
                    await _crash(hog)
            assert hog.state == "broken"
            with pytest.raises(PluginUnavailable) as info:
                await hog.call("ok")
            exc = info.value
            assert (exc.plugin, exc.reason) == ("hog", "circuit-breaker-open")
            assert exc.last_exit_reasons == ["exited"] * 3
            assert "exited, exited, exited" in exc.message
            assert exc.retry_after is not None
            assert 0 < exc.retry_after <= 30
            assert hog.stats().breaker_open
            opened = [e for e in logs if e["event"] == "breaker.open"]
            assert len(opened) == 1
            assert opened[0]["last_exits"] == ["exited"] * 3
            # Failing fast: no worker was started for the refused call.
            assert hog.worker is None
            rt.reset("hog")
            assert await hog.call("ok") == "ok"
            assert not hog.stats().breaker_open


async def test_the_breaker_closes_by_itself_when_the_window_passes(tmp_path: Path) -> None:
    config = base_config(tmp_path, restart={"max": 1, "within": "1 s", "backoff": "0.01 s"})
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            await _crash(hog)
            await _crash(hog)
            with pytest.raises(PluginUnavailable) as info:
                await hog.call("ok")
            # Waiting out the breaker's own window is the behaviour under test.
            assert info.value.retry_after is not None
            await anyio.sleep(info.value.retry_after)
            with capture_logs() as logs:
                assert await hog.call("ok") == "ok"
            assert any(e["event"] == "breaker.closed" for e in logs)


async def test_an_idle_worker_that_stops_answering_pings_is_killed_as_unresponsive(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path, health_interval="0.1 s", health_timeout="0.2 s")
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            pid = await hog.call("pid")
            worker = hog.worker
            assert worker is not None
            os.kill(pid, signal.SIGSTOP)
            await worker.exited.wait()
            assert worker.exit is not None
            assert (worker.exit.reason, worker.exit.signal) == ("unresponsive", signal.SIGKILL)
            assert "no answer to ping" in str(worker.exit.detail)
            assert await hog.call("pid") != pid
            assert hog.stats().restarts == 1


async def test_calls_queued_during_backoff_are_each_served_once_by_the_restarted_worker(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path, restart={"backoff": "0.6 s", "max-backoff": "1 s"})
    tags = [f"call-{i}" for i in range(8)]
    results: dict[str, Any] = {}
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            await _crash(hog)

            async def one(tag: str) -> None:
                results[tag] = await hog.call("count", {"tag": tag})

            async with anyio.create_task_group() as tg:
                for tag in tags:
                    tg.start_soon(one, tag)
                await _until(lambda: hog.state == "backoff")
            assert results == {t: t for t in tags}
            assert sorted(await hog.call("executions")) == sorted(tags)
            assert hog.stats().restarts == 1


async def test_lifecycle_events_are_logged_as_structured_events(tmp_path: Path) -> None:
    config = base_config(
        tmp_path, memory="256 MiB", restart={"max": 1, "within": "30 s", "backoff": "0.01 s"}
    )
    with anyio.fail_after(60):
        async with Runtime(config) as rt:
            hog = await rt.load(HOG)
            with capture_logs() as logs:
                await _crash(hog)
                await hog.call("ok")
                with pytest.raises(QuotaExceeded):
                    await hog.call("memory_bomb")
                await _until(lambda: hog.state == "broken")
    events = [e["event"] for e in logs if e.get("plugin") == "hog"]
    wanted = [
        "worker.started",
        "worker.ready",
        "worker.crashed",
        "worker.started",
        "worker.restarted",
        "worker.ready",
        "quota.hit",
        "worker.crashed",
        "quota.hit",
        "breaker.open",
    ]
    lifecycle = [e for e in events if e in set(wanted)]
    assert lifecycle == wanted
    crashed = [e for e in logs if e["event"] == "worker.crashed"]
    assert [c["reason"] for c in crashed] == ["exited", "memory"]
    hits = [e for e in logs if e["event"] == "quota.hit"]
    assert all(h["kind"] == "memory" and h["limit"] == 256 * 1024 * 1024 for h in hits)
