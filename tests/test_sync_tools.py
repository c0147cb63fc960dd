"""Plain ``def`` tools, through a real worker: host APIs through ``ctx.run`` (same results,
same typed errors, cancellable), and many of them at once under the default memory limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import CallTimeout, PluginHandle, QuotaExceeded, Runtime
from tests.conftest import TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

AUTHOR = TEST_PLUGINS / "author"
#: The default memory limit (README, operator configuration): what a new user runs under.
DEFAULT_MEMORY = "256 MiB"


@pytest.fixture
async def author(tmp_path: Path) -> AsyncIterator[PluginHandle]:
    config = base_config(tmp_path, memory=DEFAULT_MEMORY)
    config["plugins"] = {"author": {"grant": ["log", "storage"]}}
    async with Runtime(config) as rt:
        yield await rt.load(AUTHOR)


async def test_a_sync_tool_uses_host_apis_through_ctx_run(author: PluginHandle) -> None:
    with anyio.fail_after(30):
        got = await author.call("sync_storage", {"key": "k", "value": {"v": [1, 2]}})
    assert got == {"v": [1, 2]}


async def test_a_sync_tool_gets_the_same_typed_error_as_async_code(author: PluginHandle) -> None:
    with anyio.fail_after(30):
        got = await author.call("sync_denied")
    assert got == {"error": "PermissionDenied", "permission": "config", "plugin": "author"}


async def test_ctx_run_on_the_event_loop_is_refused_instead_of_deadlocking(
    author: PluginHandle,
) -> None:
    with anyio.fail_after(30):
        message = await author.call("run_on_loop")
    assert "await it instead" in message


async def test_a_timed_out_sync_call_waiting_in_ctx_run_is_cancelled_and_the_worker_kept(
    author: PluginHandle,
) -> None:
    with anyio.fail_after(30):
        pid = await author.call("pid")
        with pytest.raises(CallTimeout):
            await author.call("sync_wait", {"seconds": 60}, timeout=0.3)
        # The thread left ctx.run with CallCancelled and ended: the worker answered the
        # cancel in time and was not recycled.
        assert "sync_wait:cancelled" in await author.call("events")
        assert await author.call("pid") == pid
    assert author.stats().crashes == 0


async def test_eight_sync_calls_at_once_all_run_under_the_default_memory_limit(
    author: PluginHandle,
) -> None:
    threads: list[Any] = []

    async def one() -> None:
        threads.append(await author.call("meet", {"parties": 8}))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
    assert len(set(threads)) == 8, "each call ran in its own thread, all at the same time"


async def test_a_sync_call_that_cannot_get_a_thread_is_a_memory_quota_error(
    author: PluginHandle,
) -> None:
    with anyio.fail_after(30):
        assert await author.call("squeeze", {"keep_mib": 2}) > 0
        # No pool thread exists yet, and there is no room left for a new one's stack.
        with pytest.raises(QuotaExceeded) as err:
            await author.call("meet", {"parties": 1})
    assert err.value.fields()["kind"] == "memory"
    assert "cannot start another thread" in err.value.message
