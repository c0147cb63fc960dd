"""Calls through real worker processes: validation, concurrency, progress, errors, the channel."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from cordon.protocol import ProgressParams
from cordon.runtime import InvalidParams, MethodNotFound, PluginError, Runtime

pytestmark = pytest.mark.anyio


async def test_a_tool_answers_through_the_worker(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"
        assert await hello.call("greet", {"name": "Ada", "excited": True}) == "Hello Ada!"


async def test_positional_params_are_accepted_as_json_rpc_allows(
    rt: Runtime, probe_dir: Path
) -> None:
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        assert await probe.call("add", [2, 3]) == 5


async def test_synchronous_tools_work_too(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        assert await hello.call("shout", {"text": "abc"}) == "ABC"


async def test_a_wrong_type_is_invalid_params_naming_the_field(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        with pytest.raises(InvalidParams) as info:
            await hello.call("greet", {"name": 42})
        assert info.value.field == "name"
        assert "Expected `str`, got `int`" in (info.value.message or "")


async def test_a_missing_param_is_invalid_params_naming_the_field(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        with pytest.raises(InvalidParams) as info:
            await hello.call("greet", {})
        assert info.value.field == "name"


async def test_an_unknown_param_is_rejected_before_plugin_code_runs(
    rt: Runtime, probe_dir: Path
) -> None:
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        with pytest.raises(InvalidParams) as info:
            await probe.call("add", {"a": 1, "c": 2})
        assert info.value.field == "c"
        with pytest.raises(InvalidParams):
            await probe.call("typed", {"items": [1, "two"]})
        assert await probe.call("typed", {"items": [1, 2]}) == {"sum": 3, "label": None}


async def test_an_unknown_tool_is_method_not_found(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        with pytest.raises(MethodNotFound):
            await hello.call("nope")


async def test_a_plugin_exception_arrives_typed_and_the_worker_lives_on(
    rt: Runtime, crashy_dir: Path
) -> None:
    with anyio.fail_after(30):
        crashy = await rt.load(crashy_dir)
        with pytest.raises(PluginError) as info:
            await crashy.call("raise_error", {"message": "kaboom"})
        err = info.value
        assert (err.exc_type, err.exc_message, err.plugin) == ("ValueError", "kaboom", "crashy")
        assert "raise ValueError(message)" in (err.traceback or "")
        pid = crashy.stats().pid
        assert await crashy.call("ok") == "ok"
        assert crashy.stats().pid == pid


async def test_an_awaiting_call_does_not_block_other_calls(rt: Runtime, probe_dir: Path) -> None:
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        async with anyio.create_task_group() as tg:
            results: list[str] = []
            in_flight = anyio.Event()

            async def held() -> None:
                results.append(
                    await probe.call("hold", {"gate": "g1"}, on_progress=lambda _: in_flight.set())
                )

            tg.start_soon(held)
            await in_flight.wait()
            # The held call is in flight; others are served meanwhile.
            assert await probe.call("add", {"a": 1, "b": 1}) == 2
            assert results == []
            await probe.call("release", {"gate": "g1"})
        assert results == ["g1"]


async def test_a_tool_runs_as_its_own_asyncio_task_from_its_first_line(
    rt: Runtime, probe_dir: Path
) -> None:
    # The worker runs a tool's first step as soon as its request is read; it must still be
    # the tool's own task then, in a context of its own, as on a later loop pass.
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        first = await probe.call("task_facts", {"tag": "a"})
        second = await probe.call("task_facts", {"tag": "b"})
        async with anyio.create_task_group() as tg:
            for tag in "cdef":
                tg.start_soon(probe.call, "task_facts", {"tag": tag})
    expected = {
        "in_task": True,
        "task_name": "cordon tool task_facts",
        "same_task_after_await": True,
        "context_seen": "",
    }
    assert first == expected
    assert second == expected


async def test_progress_notifications_reach_the_caller(rt: Runtime, hello_dir: Path) -> None:
    seen: list[ProgressParams] = []
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        assert await hello.call("slow_count", {"n": 3, "delay": 0}, on_progress=seen.append) == 3
    assert [(p.progress, p.total) for p in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[-1].message == "counted 3"


async def test_print_and_raw_fd1_writes_cannot_corrupt_the_channel(
    rt: Runtime, crashy_dir: Path
) -> None:
    with anyio.fail_after(30):
        crashy = await rt.load(crashy_dir)
        assert await crashy.call("print_stdout", {"text": "not a frame"}) == "printed"
        assert await crashy.call("ok") == "ok"
        assert crashy.stats().restarts == 0


async def test_activate_hooks_run_before_the_first_call(rt: Runtime, probe_dir: Path) -> None:
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        assert (await probe.call("events"))[0] == "activated"


async def test_the_worker_gets_a_scrubbed_environment_and_no_extra_fds(
    rt: Runtime, probe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORDON_TEST_SECRET", "hunter2")
    with anyio.fail_after(30):
        probe = await rt.load(probe_dir)
        env = await probe.call("env")
        fds = await probe.call("fds")
    assert "CORDON_TEST_SECRET" not in env
    assert set(env) <= {
        "LANG",
        "LC_ALL",
        "TZ",
        "PATH",
        "HOME",
        "TMPDIR",
        "CORDON_HOST_PID",
        "MALLOC_ARENA_MAX",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "CORDON_LOOP_SHORTCUTS",  # only when set for the host (CI's public-path pass)
    }
    # 0-2, the two channel fds, and what the interpreter and asyncio open themselves
    # (epoll, the self-pipe socketpair): nothing inherited.
    assert len(fds) <= 8, fds


async def test_many_concurrent_calls_all_get_their_own_answer(rt: Runtime, probe_dir: Path) -> None:
    with anyio.fail_after(60):
        probe = await rt.load(probe_dir)
        answers: dict[int, int] = {}

        async def one(i: int) -> None:
            answers[i] = await probe.call("add", {"a": i, "b": i})

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)
    assert answers == {i: 2 * i for i in range(500)}
