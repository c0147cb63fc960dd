"""Activation by events: an event a plugin declares starts it when it is not running, and
is delivered once it is ready; events meanwhile wait in its bounded queue. Real workers, run
by tests/plugins/activated, which acknowledges each ``job.<x>`` with ``ack.<x>``."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from cordon.runtime import CordonError, Runtime
from tests.conftest import TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

ACTIVATED = TEST_PLUGINS / "activated"
GRANT = ["events:subscribe:job.*", "events:subscribe:unhandled.*", "events:emit:ack.*"]


class Acks:
    """The plugin's ``ack.*`` events, as the host's own subscriber sees them."""

    def __init__(self, rt: Runtime) -> None:
        self.got: list[tuple[str, Any, str]] = []
        self._changed = anyio.Event()
        assert rt.events is not None
        rt.events.subscribe("test", "ack.*", self._deliver)

    async def _deliver(self, topic: str, payload: Any, source: str) -> None:
        self.got.append((topic, payload, source))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, n: int) -> list[tuple[str, Any, str]]:
        with anyio.fail_after(30):
            while len(self.got) < n:
                await self._changed.wait()
        return self.got


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll a state the runtime updates in its own tasks (callers bound it by fail_after)."""
    for _ in itertools.count():
        if predicate():
            return
        await anyio.sleep(0.005)


def _scratch(rt: Runtime) -> Path:
    assert rt.state_dir is not None
    return rt.state_dir / "scratch" / "activated"


async def test_an_event_starts_a_plugin_that_never_ran_and_is_delivered_to_it(
    tmp_path: Path,
) -> None:
    async with Runtime(base_config(tmp_path, grant=GRANT)) as rt:
        h = await rt.load(ACTIVATED)
        acks = Acks(rt)
        assert (h.state, h.worker) == ("discovered", None)
        assert await rt.emit("job.one", {"n": 1}) == 1
        (got,) = await acks.wait(1)
        assert h.worker is not None and h.state == "active"
        assert got == (
            "ack.one",
            {"payload": {"n": 1}, "pid": h.worker.pid, "seen": 1},
            "activated",
        )


async def test_a_stopped_plugin_is_started_again_by_its_next_event(tmp_path: Path) -> None:
    async with Runtime(base_config(tmp_path, grant=GRANT)) as rt:
        h = await rt.load(ACTIVATED)
        acks = Acks(rt)
        first = (await h.call("activations"))["pid"]
        await h.stop()
        assert h.state == "stopped"
        assert await rt.emit("job.again") == 1
        (got,) = await acks.wait(1)
        assert got[1]["pid"] != first


async def test_events_emitted_during_the_start_wait_and_arrive_in_order_at_one_worker(
    tmp_path: Path,
) -> None:
    async with Runtime(base_config(tmp_path, grant=GRANT)) as rt:
        h = await rt.load(ACTIVATED)
        acks = Acks(rt)
        (_scratch(rt) / "hold").touch()  # activate waits while this exists
        taken = [await rt.emit(f"job.n{i}", i) for i in range(20)]
        assert taken == [1] * 20
        with anyio.fail_after(30):
            await _until(lambda: h.state == "loading")
        assert acks.got == []
        (_scratch(rt) / "hold").unlink()
        got = await acks.wait(20)
        assert [payload["payload"] for _, payload, _ in got] == list(range(20))
        assert [payload["seen"] for _, payload, _ in got] == list(range(1, 21))
        assert len({payload["pid"] for _, payload, _ in got}) == 1
        assert (await h.call("activations"))["activations"] == 1


async def test_a_full_queue_drops_new_events_counts_them_and_logs_the_episode_once(
    tmp_path: Path,
) -> None:
    async with Runtime(base_config(tmp_path, grant=GRANT)) as rt:
        assert rt.events is not None
        rt.events.queue_size = 4  # the plugin's queue is made at load
        h = await rt.load(ACTIVATED)
        acks = Acks(rt)
        (_scratch(rt) / "hold").touch()
        assert await rt.emit("job.first", 0) == 1
        with anyio.fail_after(30):
            # The first event is out of the queue, in delivery, waiting for the start.
            await _until(lambda: h.state == "loading")
        with capture_logs() as logs:
            taken = [await rt.emit(f"job.n{i}", i) for i in range(1, 11)]
        assert taken == [1] * 4 + [0] * 6
        sub = h._subscription
        assert sub is not None and sub.dropped == 6
        dropped = [e for e in logs if e["event"] == "event.dropped"]
        assert [(e["subscriber"], e["topic"]) for e in dropped] == [("activated", "job.n5")]
        (_scratch(rt) / "hold").unlink()
        got = await acks.wait(5)
        assert [payload["payload"] for _, payload, _ in got] == [0, 1, 2, 3, 4]
        with capture_logs() as logs:
            assert await rt.emit("job.later", 99) == 1
        recovered = [e for e in logs if e["event"] == "event.queue_recovered"]
        assert [(e["dropped"], e["dropped_total"]) for e in recovered] == [(6, 6)]
        await acks.wait(6)


async def test_a_disabled_plugin_is_not_started_by_events_until_it_is_enabled(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path, grant=GRANT)
    config["plugins"] = {"activated": {"enabled": False}}
    async with Runtime(config) as rt:
        h = await rt.load(ACTIVATED)
        acks = Acks(rt)
        assert await rt.emit("job.x") == 0
        assert (h.state, h.worker) == ("disabled", None)
        await rt.enable("activated")
        assert await rt.emit("job.y") == 1
        (got,) = await acks.wait(1)
        assert got[0] == "ack.y"


async def test_a_plugin_whose_start_failed_is_not_retried_by_events(tmp_path: Path) -> None:
    async with Runtime(base_config(tmp_path, grant=GRANT)) as rt:
        h = await rt.load(ACTIVATED)
        acks = Acks(rt)
        (_scratch(rt) / "fail").touch()  # activate raises
        with anyio.fail_after(30), pytest.raises(CordonError):
            await h.start()
        assert h.state == "failed"
        assert await rt.emit("job.x") == 0
        # A call (or start, reload, reset) does retry it; events follow once it is up.
        (_scratch(rt) / "fail").unlink()
        with anyio.fail_after(30):
            await h.start()
        assert await rt.emit("job.y") == 1
        (got,) = await acks.wait(1)
        assert got[0] == "ack.y"


async def test_an_event_the_plugin_may_not_receive_does_not_start_it(tmp_path: Path) -> None:
    async with Runtime(base_config(tmp_path, grant=["events:emit:ack.*"])) as rt:
        h = await rt.load(ACTIVATED)
        assert await rt.emit("job.x") == 0
        assert await rt.emit("other.x") == 0
        assert (h.state, h.worker) == ("discovered", None)


async def test_an_unloaded_plugin_takes_no_more_events(tmp_path: Path) -> None:
    async with Runtime(base_config(tmp_path, grant=GRANT)) as rt:
        await rt.load(ACTIVATED)
        await rt.unload("activated")
        assert await rt.emit("job.x") == 0


async def test_events_no_running_handler_takes_are_logged_once_per_worker(tmp_path: Path) -> None:
    async with Runtime(base_config(tmp_path, grant=GRANT)) as rt:
        await rt.load(ACTIVATED)
        acks = Acks(rt)
        with capture_logs() as logs:
            for i in range(5):
                assert await rt.emit(f"unhandled.n{i}") == 1
            assert await rt.emit("job.after") == 1
            # One queue, in order: once job.after is acknowledged the others were delivered.
            await acks.wait(1)
        unhandled = [e for e in logs if e["event"] == "event.no_handler"]
        assert [(e["plugin"], e["topic"]) for e in unhandled] == [("activated", "unhandled.n0")]
