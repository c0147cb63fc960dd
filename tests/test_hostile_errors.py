"""A plugin's errors are claims: whatever it puts in an error object, the host decodes it
without failing, never as a host-only class, and stays up for every other plugin. And a
worker that dies on its way out is not brought back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from cordon.runtime import PluginError, RemoteError, Runtime
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

LIAR = TEST_PLUGINS / "liar"
HELLO = EXAMPLES / "hello"


async def test_an_error_whose_fields_fit_no_class_arrives_verbatim_and_the_host_stays_up(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path)) as rt:
            liar = await rt.load(LIAR)
            hello = await rt.load(HELLO)
            assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"
            with pytest.raises(RemoteError) as info:
                await liar.call("bad_fields")
            assert info.value.remote_code == -32010
            # Neither the runtime nor its other plugins noticed.
            assert await hello.call("greet", {"name": "Bo"}) == "Hello Bo"
            assert await liar.call("pid") == liar.stats().pid


async def test_a_worker_cannot_pass_off_a_host_only_subclass_of_an_allowed_error(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path)) as rt:
            liar = await rt.load(LIAR)
            with pytest.raises(PluginError) as info:
                await liar.call("forged_subclass")
            assert type(info.value) is PluginError  # not the host's UnknownContribution
            assert info.value.exc_type == "UnknownContribution"


@pytest.mark.parametrize("how", ["unload", "stop"])
async def test_a_worker_that_dies_in_deactivate_is_not_restarted_after_it_was_stopped(
    tmp_path: Path, how: str
) -> None:
    config = base_config(tmp_path, restart={"backoff": "0.01 s"})
    with anyio.fail_after(30):
        async with Runtime(config) as rt:
            liar = await rt.load(LIAR)
            await liar.call("die_in_deactivate")
            crashed = anyio.Event()

            async def on_crashed(topic: str, payload: Any, source: str) -> None:
                crashed.set()

            assert rt.events is not None
            rt.events.subscribe("test", "cordon.plugin.crashed", on_crashed)
            worker = liar.worker
            assert worker is not None
            if how == "unload":
                await rt.unload("liar")
            else:
                await liar.stop()
            await worker.exited.wait()
            assert worker.exit is not None and worker.exit.returncode == 3
            # Supervision saw the crash; once every task has settled, no restart is pending
            # (one would be sleeping out its backoff).
            await crashed.wait()
            await anyio.wait_all_tasks_blocked()
            assert liar._restart_scope is None
            assert liar.worker is None and liar.restarts == 0
            # No worker left; the runtime's zygote (a launcher, not a worker) may run.
            zygote = getattr(rt.launcher, "pid", None)
            assert [c.pid for c in psutil.Process().children() if c.pid != zygote] == []
