"""Hot reload: a new worker takes over new calls, the old one finishes its in-flight calls, a
broken new version leaves the old one serving, and no call fails while reloading under load."""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from cordon.runtime import CordonError, ManifestError, Runtime
from cordon.runtime._platform._reload import ReloadOutcome
from cordon.runtime._platform._versions import IncompatibleDependency

from .conftest import TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

MODULE = "reloadable_plugin.py"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A private copy of the reloadable plugin, to edit between reloads."""
    dest = tmp_path / "reloadable"
    shutil.copytree(TEST_PLUGINS / "reloadable", dest)
    return dest


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    async with Runtime(base_config(tmp_path, grant=["storage"])) as runtime:
        yield runtime


def set_version(src: Path, version: str) -> None:
    path = src / MODULE
    path.write_text(re.sub(r'VERSION = "[^"]*"', f'VERSION = "{version}"', path.read_text()))


async def test_reload_switches_new_calls_to_the_new_code(rt: Runtime, src: Path) -> None:
    with anyio.fail_after(30):
        handle = await rt.load(src)
        assert await rt.call_tool("version") == "v1"
        old = handle.worker
        set_version(src, "v2")
        assert await rt.call_tool("version") == "v1"  # nothing changes until asked
        await rt.reload("reloadable")
        assert await rt.call_tool("version") == "v2"
        assert handle.state == "active"
        assert old is not None and handle.worker is not old
        # The old worker was stopped cleanly once it had no calls left.
        assert old.exit is not None and old.exit.reason == "shutdown"


async def test_reload_lets_in_flight_calls_on_the_old_worker_finish(rt: Runtime, src: Path) -> None:
    with anyio.fail_after(30):
        await rt.load(src)
        results: list[str] = []
        started = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def slow_call() -> None:
                answer = await rt.call_tool(
                    "slow", {"delay": 1.0}, on_progress=lambda _: started.set()
                )
                results.append(answer)

            tg.start_soon(slow_call)
            await started.wait()  # in flight on the v1 worker
            set_version(src, "v2")
            await rt.reload("reloadable")
            # reload returned only once the old worker had drained and stopped.
            assert results == ["v1"]
            assert await rt.call_tool("version") == "v2"
        assert results == ["v1"]


async def test_a_new_version_that_cannot_import_leaves_the_old_one_serving(
    rt: Runtime, src: Path
) -> None:
    with anyio.fail_after(30):
        handle = await rt.load(src)
        assert await rt.call_tool("version") == "v1"
        pid = handle.stats().pid
        (src / MODULE).write_text((src / MODULE).read_text() + "\nthis is not python\n")
        with pytest.raises(CordonError):
            await rt.reload("reloadable")
        assert await rt.call_tool("version") == "v1"
        assert handle.stats().pid == pid
        assert handle.state == "active"
        assert (handle.state_reason or "").startswith("reload failed:")
        # A crash during a reload attempt does not count towards the restart policy.
        assert handle.stats().restarts == 0 and not handle.stats().breaker_open


async def test_a_new_version_with_a_bad_manifest_leaves_the_old_one_serving(
    rt: Runtime, src: Path
) -> None:
    with anyio.fail_after(30):
        await rt.load(src)
        assert await rt.call_tool("version") == "v1"
        manifest = src / "plugin.toml"
        manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "one"'))
        set_version(src, "v2")
        with pytest.raises(ManifestError) as info:
            await rt.reload("reloadable")
        assert "plugin.version" in str(info.value)
        assert await rt.call_tool("version") == "v1"


async def test_host_storage_survives_a_reload(rt: Runtime, src: Path) -> None:
    with anyio.fail_after(30):
        await rt.load(src)
        await rt.call_tool("remember", {"value": "kept"})
        set_version(src, "v2")
        await rt.reload("reloadable")
        assert await rt.call_tool("recall") == "kept"
        assert await rt.call_tool("version") == "v2"


async def test_reload_picks_up_a_new_manifest(rt: Runtime, src: Path) -> None:
    with anyio.fail_after(30):
        handle = await rt.load(src)
        manifest = src / "plugin.toml"
        manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.1.0"'))
        await rt.reload("reloadable")
        assert handle.manifest.version == "1.1.0"


async def test_reloading_under_continuous_load_fails_no_call(rt: Runtime, src: Path) -> None:
    versions = ["v1", "v2", "v3", "v4"]
    per_stream: dict[int, list[str]] = {}
    failures: list[BaseException] = []
    done = anyio.Event()
    with anyio.fail_after(60):
        await rt.load(src)
        assert await rt.call_tool("version") == "v1"

        async def stream(n: int) -> None:
            seen = per_stream.setdefault(n, [])
            for _ in range(5000):  # bounded, but far more than the reloads need
                if done.is_set():
                    return
                try:
                    seen.append(await rt.call_tool("slow", {"delay": 0.005}))
                except Exception as exc:  # every failure is the finding
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(stream, n)
            for version in versions[1:]:
                set_version(src, version)
                await rt.reload("reloadable")
                assert await rt.call_tool("version") == version
            done.set()
    assert failures == []
    all_results = [r for seen in per_stream.values() for r in seen]
    assert set(all_results) <= set(versions)
    # Every version served calls: the streams ran across each switch.
    assert set(all_results) == set(versions)
    for seen in per_stream.values():
        # Each stream's calls are sequential: once it met a version it never goes back.
        assert seen == sorted(seen, key=versions.index)
        assert seen[-1] == "v4"
    assert rt.get("reloadable").stats().restarts == 0


async def test_a_new_version_that_would_break_a_dependent_is_refused(
    rt: Runtime, src: Path, tmp_path: Path
) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "user_plugin.py").write_text("from cordon.worker import Plugin\nplugin = Plugin()\n")
    (user / "plugin.toml").write_text(
        '[plugin]\nid = "user"\nname = "User"\nversion = "1.0"\nentry = "user_plugin:plugin"\n'
        '[plugin.requires]\nreloadable = "^1.0"\n'
    )
    with anyio.fail_after(30):
        await rt.load(src)
        await rt.load(user)
        assert await rt.call_tool("version") == "v1"
        manifest = src / "plugin.toml"
        manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "2.0.0"'))
        set_version(src, "v2")
        with pytest.raises(IncompatibleDependency) as info:
            await rt.reload("reloadable")
        assert (info.value.plugin, info.value.dependency) == ("user", "reloadable")
        assert await rt.call_tool("version") == "v1"
        assert rt.get("reloadable").manifest.version == "1.0.0"


async def test_watch_reloads_a_plugin_when_its_file_changes(rt: Runtime, src: Path) -> None:
    outcomes: list[ReloadOutcome] = []
    reloaded = anyio.Event()
    ready = anyio.Event()

    def heard(outcome: ReloadOutcome) -> None:
        outcomes.append(outcome)
        reloaded.set()

    with anyio.fail_after(30):
        await rt.load(src)
        assert await rt.call_tool("version") == "v1"
        async with anyio.create_task_group() as tg:
            # Polling: inotify's backend closes its fds on its own thread after the watcher
            # is gone, which the leak check would see.
            watch = functools.partial(
                rt.watch, on_reload=heard, ready=ready, debounce_ms=50, force_polling=True
            )
            tg.start_soon(watch)
            await ready.wait()
            set_version(src, "v2")
            await reloaded.wait()
            tg.cancel_scope.cancel()
        assert await rt.call_tool("version") == "v2"
    assert outcomes[0].plugin == "reloadable" and outcomes[0].error is None
    assert str(src / MODULE) in outcomes[0].changed
