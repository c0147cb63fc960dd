"""A call's deadline covers everything from the call to its answer, waiting for a worker
included: restart backoff, spawn, initialize, activate. Real workers: hog (crashes on
demand) and tests/plugins/activated (whose activate the test holds with a file)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from cordon.runtime import CallTimeout, PluginUnavailable, Runtime, WorkerCrashed
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

HOG = EXAMPLES / "hog"
ACTIVATED = TEST_PLUGINS / "activated"


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll a state the runtime updates in its own tasks (callers bound it by fail_after)."""
    for _ in itertools.count():
        if predicate():
            return
        await anyio.sleep(0.005)


def _hold(rt: Runtime) -> Path:
    """While this file exists, the activated plugin's activate does not return."""
    assert rt.state_dir is not None
    return rt.state_dir / "scratch" / "activated" / "hold"


async def test_a_call_during_restart_backoff_fails_at_its_deadline_not_after_the_backoff(
    tmp_path: Path,
) -> None:
    # A backoff far longer than the test's own deadline: waiting it out would fail the test.
    config = base_config(tmp_path, restart={"backoff": "120 s", "max-backoff": "120 s"})
    async with Runtime(config) as rt:
        hog = await rt.load(HOG)
        with anyio.fail_after(30):
            await hog.call("ok")
            with pytest.raises(WorkerCrashed):
                await hog.call("crash")
            await _until(lambda: hog.state == "backoff")
        with anyio.fail_after(15), pytest.raises(CallTimeout) as err:
            await hog.call("ok", timeout=1)
        assert (err.value.timeout, err.value.method, err.value.plugin) == (1, "ok", "hog")
        assert "waiting for its worker to start (state 'backoff')" in err.value.message
        # The restart is still coming, for the calls after this one.
        assert hog.state == "backoff"
        assert hog.stats().errors == {"CallTimeout": 1, "WorkerCrashed": 1}


async def test_a_call_while_activate_is_slow_fails_at_its_deadline_and_the_start_goes_on(
    tmp_path: Path,
) -> None:
    async with Runtime(base_config(tmp_path)) as rt:
        h = await rt.load(ACTIVATED)
        _hold(rt).touch()
        with anyio.fail_after(15), pytest.raises(CallTimeout) as err:
            await h.call("activations", timeout=1)
        assert "waiting for its worker to start (state 'loading')" in err.value.message
        assert h.state == "loading"
        # The start was not cancelled with that caller: released, it serves the next call,
        # and it is the same start (activate ran once, in one worker).
        _hold(rt).unlink()
        with anyio.fail_after(30):
            got = await h.call("activations", timeout=30)
        assert got["activations"] == 1
        assert h.stats().restarts == 0


async def test_callers_waiting_for_one_start_share_it_each_with_its_own_deadline(
    tmp_path: Path,
) -> None:
    async with Runtime(base_config(tmp_path)) as rt:
        h = await rt.load(ACTIVATED)
        _hold(rt).touch()
        outcomes: dict[str, object] = {}

        async def call(label: str, timeout: float) -> None:
            try:
                outcomes[label] = await h.call("activations", timeout=timeout)
            except CallTimeout as exc:
                outcomes[label] = exc

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "short", 0.5)
                tg.start_soon(call, "long", 25)
                await _until(lambda: "short" in outcomes)
                assert "long" not in outcomes
                _hold(rt).unlink()
        assert isinstance(outcomes["short"], CallTimeout)
        long = outcomes["long"]
        assert isinstance(long, dict) and long["activations"] == 1


async def test_stopping_a_plugin_cancels_its_start_and_its_waiters_are_told(
    tmp_path: Path,
) -> None:
    async with Runtime(base_config(tmp_path)) as rt:
        h = await rt.load(ACTIVATED)
        _hold(rt).touch()
        errors: list[Exception] = []

        async def call() -> None:
            try:
                await h.call("activations", timeout=25)
            except PluginUnavailable as exc:
                errors.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await _until(lambda: h.state == "loading")
                await h.stop()
        (err,) = errors
        assert isinstance(err, PluginUnavailable) and err.reason == "stopped"
        assert (h.state, h.worker) == ("stopped", None)
        # Nothing was left half-started: the next call starts afresh.
        _hold(rt).unlink()
        with anyio.fail_after(30):
            assert (await h.call("activations"))["activations"] == 1
