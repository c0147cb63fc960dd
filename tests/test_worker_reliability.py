"""Worker defects a fault storm found, each through a real worker: a result too big to
encode under the memory limit, a request read together with a cancel before it, and
statistics that lag behind the error a caller already holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from cordon.runtime import QuotaExceeded, Runtime, WorkerCrashed
from tests.conftest import EXAMPLES, TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mib", [48, 64])
async def test_a_result_too_big_to_encode_under_the_memory_limit_is_a_memory_quota_error(
    tmp_path: Path, mib: int
) -> None:
    """Not a crash: msgspec's ``bytes`` encoder dies of SIGSEGV when growing its output
    fails under RLIMIT_AS (it touches the buffer the failed resize freed), so a result that
    may be large is encoded the way that raises MemoryError."""
    config = base_config(tmp_path)
    config["plugins"] = {"crashy": {"memory": "128 MiB"}}
    async with Runtime(config) as rt:
        crashy = await rt.load(EXAMPLES / "crashy")
        with anyio.fail_after(30), pytest.raises(QuotaExceeded) as err:
            # The result: building it fits under 128 MiB of address space, its JSON does not.
            await crashy.call("huge", {"size": mib * 1024 * 1024})
        assert err.value.fields()["kind"] == "memory"
        with anyio.fail_after(30):
            assert await crashy.call("ok") == "ok"


async def test_a_request_read_with_a_cancel_before_it_runs_after_the_cancel_took_effect(
    rt: Runtime,
) -> None:
    author = await rt.load(TEST_PLUGINS / "author")
    with anyio.fail_after(30):
        scratch = Path(await author.call("scratch"))
        holding, stalled = anyio.Event(), anyio.Event()
        got: dict[str, Any] = {}

        async def call(name: str, args: dict[str, Any], seen: anyio.Event | None) -> None:
            got[name] = await author.call(
                name, args, on_progress=(lambda _: seen.set()) if seen else None
            )

        async with anyio.create_task_group() as outer:
            with anyio.CancelScope() as hold_scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call, "hold", {"gate": "g"}, holding)
                    await holding.wait()
                    # The worker's loop is now held: what we send next waits in its pipe.
                    outer.start_soon(call, "stall_until", {"name": "go"}, stalled)
                    await stalled.wait()
                    hold_scope.cancel()  # the $/cancel for hold goes out first...
            outer.start_soon(call, "events", {}, None)  # ...then this request
            await anyio.wait_all_tasks_blocked()  # both written, the worker still held
            (scratch / "go").touch()  # released: it reads the two frames in one read
    assert got["stall_until"] is True
    assert "hold:g:cancelled" in got["events"]


async def test_stats_are_current_when_the_caller_holds_worker_crashed(
    rt: Runtime, crashy_dir: Path
) -> None:
    crashy = await rt.load(crashy_dir)
    with anyio.fail_after(30):
        assert await crashy.call("ok") == "ok"
        with pytest.raises(WorkerCrashed):
            await crashy.call("exit_now", {"code": 3})
    # No waiting: the supervisor may not have run yet, the numbers must already be right.
    stats = crashy.stats()
    assert stats.crashes == 1
    assert stats.last_exit is not None and stats.last_exit["returncode"] == 3
    assert stats.state in ("crashed", "backoff")
