"""Plugin lifecycle: states with reasons, eager and lazy activation, enable/disable, idle stop."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from cordon.runtime import ManifestError, PluginUnavailable, Runtime

from .conftest import TEST_PLUGINS, base_config

pytestmark = pytest.mark.anyio

TWIN = TEST_PLUGINS / "greet_twin"


async def test_a_lazy_plugin_is_discovered_until_first_use_then_active(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        assert (hello.state, hello.worker) == ("discovered", None)
        await rt.call_tool("hello.greet", {"name": "Ada"})
        assert rt.get("hello").state == "active"
        assert rt.get("hello").state_reason is None


async def test_an_eager_plugin_starts_at_load(tmp_path: Path, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path, activate="eager")) as rt:
            hello = await rt.load(hello_dir)
            assert hello.state == "active" and hello.worker is not None


async def test_a_plugin_disabled_in_the_config_loads_but_does_not_run(
    tmp_path: Path, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path, enabled=False, activate="eager")) as rt:
            hello = await rt.load(hello_dir)
            assert (hello.state, hello.worker) == ("disabled", None)
            assert hello.state_reason == "enabled = false in the config"
            with pytest.raises(PluginUnavailable) as info:
                await rt.call_tool("hello.greet", {"name": "Ada"})
            assert info.value.reason == "disabled"
            # Listed all the same, marked disabled.
            assert {c.enabled for c in rt.registry.contributions(plugin="hello")} == {False}
            await rt.enable("hello")
            # Eager: enabling starts it.
            assert rt.get("hello").state == "active"
            assert await rt.call_tool("hello.greet", {"name": "Ada"}) == "Hello Ada"


async def test_disable_stops_the_worker_and_enable_lets_it_start_again(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        await hello.call("greet", {"name": "Ada"})
        worker = hello.worker
        await rt.disable("hello")
        assert worker is not None and worker.exit is not None
        assert (hello.state, hello.state_reason) == ("disabled", "disabled by the host")
        with pytest.raises(PluginUnavailable):
            await hello.call("greet", {"name": "Ada"})
        await rt.enable("hello")
        # It ran before, so it is stopped (not discovered) until the next call.
        assert hello.state == "stopped"
        assert await hello.call("greet", {"name": "Ada"}) == "Hello Ada"


async def test_a_disabled_plugin_cannot_be_reloaded(rt: Runtime, hello_dir: Path) -> None:
    with anyio.fail_after(30):
        await rt.load(hello_dir)
        await rt.disable("hello")
        with pytest.raises(PluginUnavailable):
            await rt.reload("hello")


async def test_an_idle_worker_is_stopped_and_the_next_call_starts_another(
    tmp_path: Path, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path, idle_timeout="300 ms")) as rt:
            hello = await rt.load(hello_dir)
            await hello.call("greet", {"name": "Ada"})
            worker = hello.worker
            assert worker is not None
            await worker.exited.wait()
            assert worker.exit is not None and worker.exit.reason == "shutdown"
            assert hello.state == "stopped"
            assert hello.state_reason == "idle for 0.3 s"
            assert await hello.call("greet", {"name": "Bo"}) == "Hello Bo"
            assert hello.worker is not worker and hello.state == "active"


async def test_a_busy_worker_is_not_stopped_for_idleness(tmp_path: Path, probe_dir: Path) -> None:
    with anyio.fail_after(30):
        async with Runtime(base_config(tmp_path, idle_timeout="200 ms")) as rt:
            probe = await rt.load(probe_dir)
            started = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def held() -> None:
                    await probe.call("hold", {"gate": "g"}, on_progress=lambda _: started.set())

                tg.start_soon(held)
                await started.wait()
                worker = probe.worker
                assert worker is not None
                # Longer than the idle timeout, with a call in flight all along.
                with anyio.move_on_after(0.6):
                    await worker.exited.wait()
                assert worker.exit is None
                await probe.call("release", {"gate": "g"})


async def test_load_refuses_a_bad_manifest_and_loads_nothing(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "plugin.toml").write_text('[plugin]\nid = "bad"\n')
    with pytest.raises(ManifestError):
        await rt.load(tmp_path / "bad")
    assert "bad" not in rt.plugins


async def test_a_plugin_can_be_loaded_again_after_unload(rt: Runtime) -> None:
    with anyio.fail_after(30):
        await rt.load(TWIN)
        assert await rt.call_tool("wave") == "o/"
        assert await rt.unload("greet_twin") == ["greet_twin"]
        assert "greet_twin" not in rt.plugins
        await rt.load(TWIN)
        assert await rt.call_tool("wave") == "o/"


async def test_a_plugin_passes_through_loading_to_active_and_every_state_is_documented(
    rt: Runtime, hello_dir: Path
) -> None:
    from cordon.runtime import PLUGIN_STATES

    seen: list[str] = []

    async def record_until_active() -> None:
        # Every loop pass: a start spans many of them (spawn or claim, initialize, activate).
        while not seen or seen[-1] != "active":
            if not seen or seen[-1] != hello.state:
                seen.append(hello.state)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        async with anyio.create_task_group() as tg:
            tg.start_soon(record_until_active)
            await anyio.lowlevel.checkpoint()
            await hello.call("greet", {"name": "Ada"})
        await hello.stop()
        seen.append(hello.state)
    assert seen == ["discovered", "loading", "active", "stopped"]
    assert set(seen) <= set(PLUGIN_STATES)


async def test_a_disable_says_why_and_start_brings_up_a_worker_without_a_call(
    rt: Runtime, hello_dir: Path
) -> None:
    with anyio.fail_after(30):
        hello = await rt.load(hello_dir)
        await rt.disable("hello", reason="maintenance until 14:00")
        assert (hello.state, hello.state_reason) == ("disabled", "maintenance until 14:00")
        with pytest.raises(PluginUnavailable):
            await hello.start()
        await rt.enable("hello")
        await hello.start()
        assert hello.state == "active" and hello.worker is not None
        worker = hello.worker
        await hello.start()  # already serving: the same worker
        assert hello.worker is worker
